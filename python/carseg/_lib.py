"""ctypes declarations of libcarseg's public C API (include/carseg.h), and its error mapping.

Only functions of the public header are declared here; nothing reaches around it. The library is
found, in order, at $CARSEG_LIBRARY, next to this file (`make python` copies it there), in the
build/ folder of the source tree this package sits in, then by the system's loader."""

import ctypes
import ctypes.util
import os

from ctypes import (POINTER, c_char_p, c_double, c_float, c_int, c_int32, c_int64, c_size_t,
                    c_uint, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p)

ABI_VERSION = 1          # CARSEG_ABI_VERSION of the header this file was written against
SONAME = "libcarseg.so.%d" % ABI_VERSION

_here = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    env = os.environ.get("CARSEG_LIBRARY")
    if env:
        return [env]
    out = [os.path.join(_here, SONAME),
           os.path.normpath(os.path.join(_here, "..", "..", "build", SONAME))]
    found = ctypes.util.find_library("carseg")
    out.append(found or SONAME)
    return out


def _open():
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            errors.append("%s: not found" % path)
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            errors.append(str(e))
    raise ImportError("carseg: cannot load %s (%s). Build it with `make python` in the carseg "
                      "source tree (then reinstall the package), or set CARSEG_LIBRARY to its "
                      "path." % (SONAME, "; ".join(errors)))


lib, path = _open()

try:
    _abi = lib.carseg_abi_version
except AttributeError:
    raise ImportError("carseg: %s has no carseg_abi_version(): it is older than this package; "
                      "rebuild it with `make python`" % path) from None
_abi.restype = c_int
_abi.argtypes = []
if _abi() != ABI_VERSION:
    raise ImportError("carseg: %s has ABI version %d, this package needs %d: rebuild the library "
                      "(`make python`) and reinstall the package from the same source tree"
                      % (path, _abi(), ABI_VERSION))


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


P = c_void_p
status = c_int
PP = POINTER(c_void_p)


class CrfParams(ctypes.Structure):
    _fields_ = [("iters", c_int), ("pos_sxy", c_float), ("pos_w", c_float),
                ("bi_sxy", c_float), ("bi_srgb", c_float), ("bi_w", c_float)]


class SamParams(ctypes.Structure):
    _fields_ = [("iom_thres", c_double), ("min_pred", c_double), ("iou_thres", c_double)]


ROUND_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p)


class SamMasks(ctypes.Structure):
    _fields_ = [("h", c_int), ("w", c_int), ("n", c_int), ("counts", c_void_p),
                ("n_counts", c_void_p)]


class SamAmgParams(ctypes.Structure):
    _fields_ = [("points_per_side", c_int), ("points_per_batch", c_int),
                ("pred_iou_thresh", c_double), ("stability_score_thresh", c_double),
                ("stability_score_offset", c_double), ("box_nms_thresh", c_double),
                ("min_mask_region_area", c_int)]


class Options(ctypes.Structure):
    """carseg_options. Its size is checked against carseg_options_init at import."""
    _fields_ = [("size", c_size_t), ("preset", c_char_p),
                ("eta", c_float), ("theta", c_float), ("lambda_", c_float),
                ("prompts", c_char_p), ("stuff_prompts", c_char_p),
                ("bg_words", POINTER(c_char_p)), ("n_bg_words", c_int),
                ("templates", c_char_p), ("crf", c_int), ("crf_params", CrfParams),
                ("fixes", c_uint), ("keep_cams", c_int), ("precision", c_int),
                ("threads", c_int), ("on_round", c_void_p), ("on_round_user", c_void_p),
                ("sam_masks", c_void_p), ("sam", SamParams)]


version = _fn("carseg_version", c_char_p)
last_error = _fn("carseg_last_error", c_char_p)
status_str = _fn("carseg_status_str", c_char_p, status)
set_threads = _fn("carseg_set_threads", None, c_int)
get_threads = _fn("carseg_get_threads", c_int)
models_allow_download = _fn("carseg_models_allow_download", None, c_int)

tokenizer_open = _fn("carseg_tokenizer_open", status, c_char_p, PP)
tokenizer_close = _fn("carseg_tokenizer_close", None, P)
tokenizer_encode = _fn("carseg_tokenizer_encode", c_int, P, c_char_p, POINTER(c_int32), c_int)
tokenize = _fn("carseg_tokenize", c_int, P, c_char_p, POINTER(c_int32), c_int)

image_load = _fn("carseg_image_load", status, c_char_p, POINTER(POINTER(c_uint8)),
                 POINTER(c_int), POINTER(c_int))
image_decode = _fn("carseg_image_decode", status, c_char_p, c_size_t, c_int64,
                   POINTER(POINTER(c_uint8)), POINTER(c_int), POINTER(c_int))
image_free = _fn("carseg_image_free", None, POINTER(c_uint8))
labels_encode_png = _fn("carseg_labels_encode_png", status, POINTER(c_uint16), c_int, c_int,
                        c_int, POINTER(POINTER(c_uint8)), POINTER(c_size_t))
libc_free = ctypes.CDLL(None).free
libc_free.argtypes = [c_void_p]
libc_free.restype = None

clip_load = _fn("carseg_clip_load", status, c_char_p, PP)
clip_free = _fn("carseg_clip_free", None, P)
clip_embed_dim = _fn("carseg_clip_embed_dim", c_int, P)
clip_image_size = _fn("carseg_clip_image_size", c_int, P)
clip_logit_scale = _fn("carseg_clip_logit_scale", c_float, P)
clip_set_precision = _fn("carseg_clip_set_precision", status, P, c_int)
clip_get_precision = _fn("carseg_clip_get_precision", c_int, P)
clip_preprocess = _fn("carseg_clip_preprocess", status, P, POINTER(c_uint8), c_int, c_int,
                      POINTER(c_float))
clip_encode_images = _fn("carseg_clip_encode_images", status, P, POINTER(c_float), c_int, c_int,
                         POINTER(c_float))
clip_encode_images_hw = _fn("carseg_clip_encode_images_hw", status, P, POINTER(c_float), c_int,
                            c_int, c_int, c_int, POINTER(c_float))
clip_encode_tokens = _fn("carseg_clip_encode_tokens", status, P, POINTER(c_int32), c_int, c_int,
                         POINTER(c_float))
clip_config_json = _fn("carseg_clip_config_json", status, P, POINTER(c_void_p))
precision_parse = _fn("carseg_precision_parse", status, c_char_p, POINTER(c_int))
precision_name = _fn("carseg_precision_name", c_char_p, c_int)

crf_defaults = _fn("carseg_crf_defaults", CrfParams)
crf = _fn("carseg_crf", status, POINTER(c_float), c_int, c_int, c_int, POINTER(c_uint8),
          POINTER(CrfParams), POINTER(c_uint16), POINTER(c_float))
crf_features_car = _fn("carseg_crf_features_car", None, POINTER(c_uint8), c_int, c_int,
                       POINTER(c_uint8))

car_model_open = _fn("carseg_car_model_open", status, c_char_p, c_char_p, c_char_p, PP)
car_model_set_precision = _fn("carseg_car_model_set_precision", status, P, c_int)
car_model_precision = _fn("carseg_car_model_precision", c_int, P)
car_model_close = _fn("carseg_car_model_close", None, P)
car_model_generator = _fn("carseg_car_model_generator", P, P)
car_model_classifier = _fn("carseg_car_model_classifier", P, P)
car_model_tokenizer = _fn("carseg_car_model_tokenizer", P, P)
segmenter_new = _fn("carseg_segmenter_new", status, P, PP)
segmenter_free = _fn("carseg_segmenter_free", None, P)
fixes_parse = _fn("carseg_fixes_parse", status, c_char_p, POINTER(c_uint))
options_init = _fn("carseg_options_init", None, POINTER(Options))
options_check = _fn("carseg_options_check", status, POINTER(Options), c_int)
preset_classes = _fn("carseg_preset_classes", status, c_char_p, POINTER(POINTER(c_char_p)),
                     POINTER(c_int))
presets_count = _fn("carseg_presets_count", c_int)
preset_name = _fn("carseg_preset_name", c_char_p, c_int)
preset_is_refer = _fn("carseg_preset_is_refer", c_int, c_char_p)
prepare = _fn("carseg_prepare", status, P, POINTER(c_uint8), c_int, c_int, POINTER(Options), PP)
prepared_free = _fn("carseg_prepared_free", None, P)
segment = _fn("carseg_segment", status, P, P, POINTER(c_char_p), c_int, POINTER(Options), PP)
refer = _fn("carseg_refer", status, P, P, POINTER(c_char_p), c_int, POINTER(Options), PP)
result_free = _fn("carseg_result_free", None, P)
result_width = _fn("carseg_result_width", c_int, P)
result_height = _fn("carseg_result_height", c_int, P)
result_is_refer = _fn("carseg_result_is_refer", c_int, P)
result_count = _fn("carseg_result_count", c_int, P)
result_class = _fn("carseg_result_class", c_char_p, P, c_int)
result_score = _fn("carseg_result_score", c_float, P, c_int)
result_labels = _fn("carseg_result_labels", POINTER(c_uint16), P)
result_mask = _fn("carseg_result_mask", POINTER(c_uint8), P, c_int)
result_cams = _fn("carseg_result_cams", POINTER(c_float), P, c_int)
result_rounds = _fn("carseg_result_rounds", c_int, P)
result_round = _fn("carseg_result_round", c_int, P, c_int, POINTER(POINTER(c_int)),
                   POINTER(POINTER(c_float)), POINTER(POINTER(c_uint8)))
result_round_pass = _fn("carseg_result_round_pass", c_int, P, c_int)
result_timing = _fn("carseg_result_timing", c_double, P, c_char_p)
result_json = _fn("carseg_result_json", status, P, c_char_p, POINTER(c_void_p))

sam_load = _fn("carseg_sam_load", status, c_char_p, PP)
sam_free = _fn("carseg_sam_free", None, P)
sam_set_image = _fn("carseg_sam_set_image", status, P, POINTER(c_uint8), c_int, c_int, PP)
sam_image_free = _fn("carseg_sam_image_free", None, P)
sam_amg_init = _fn("carseg_sam_amg_init", None, POINTER(SamAmgParams))
sam_generate = _fn("carseg_sam_generate", status, P, P, POINTER(SamAmgParams), PP)
sam_records_free = _fn("carseg_sam_records_free", None, P)
sam_records_count = _fn("carseg_sam_records_count", c_int, P)
sam_records_masks = _fn("carseg_sam_records_masks", status, P, POINTER(SamMasks))

rle_encode = _fn("carseg_rle_encode", status, POINTER(c_uint8), c_int, c_int, POINTER(c_void_p))
rle_decode = _fn("carseg_rle_decode", status, c_char_p, c_int, c_int, POINTER(c_uint8),
                 POINTER(c_uint64), POINTER(c_double))

_o = Options()
options_init(ctypes.byref(_o))
if _o.size != ctypes.sizeof(Options):
    raise ImportError("carseg: %s has sizeof(carseg_options) = %d, this package expects %d: the "
                      "library and the package come from different sources; rebuild with "
                      "`make python` and reinstall" % (path, _o.size, ctypes.sizeof(Options)))
del _o

# carseg_status values (include/carseg.h)
OK, EIO, EFORMAT, EMODEL, ENOMEM, EINVAL, ENET = range(7)
