/* fuzz_image.c — libFuzzer target for the image decoders (JPEG, PNG, TIFF): any input must give
 * either a clean error or a well-formed image, never a crash, leak or sanitizer report.
 *   make fuzz && build/fuzz/fuzz_image -max_len=65536 corpus/ */
#include <stdint.h>
#include <stdlib.h>

#include "image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    image_u8 im;
    if (image_decode_rgb("fuzz", data, size, &im) == CARSEG_OK) {
        volatile uint8_t sink = im.px[(size_t)im.w * im.h * im.c - 1];
        (void)sink;
        image_free(&im);
    }
    if (image_decode_indexed("fuzz", data, size, &im) == CARSEG_OK) image_free(&im);
    int w, h;
    uint16_t *v = NULL;
    if (image_decode_labels16("fuzz", data, size, &w, &h, &v) == CARSEG_OK) {
        volatile uint16_t sink = v[(size_t)w * h - 1];
        (void)sink;
    }
    free(v);
    return 0;
}
