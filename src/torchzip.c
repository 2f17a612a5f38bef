/* torchzip.c — PyTorch zip archives (TorchScript, torch.save). Reader lands in the next commit. */
#include "util.h"
#include "weights.h"

carseg_status tz_read(wfile *f, const uint8_t *buf, size_t len) {
    (void)buf; (void)len;
    return set_err(CARSEG_EFORMAT, "%s: PyTorch zip archives are not supported by this build yet", f->path);
}
