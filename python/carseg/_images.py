"""Images in: H×W×3 uint8 arrays (any strides, read-only too), PIL images, paths, encoded bytes."""

import ctypes
import os

import numpy as np

from . import _lib
from ._errors import check


def load_image(path):
    """Decodes a JPEG or PNG file to an H×W×3 uint8 array, pixel-identical to
    Pillow's Image.open(path).convert("RGB") (the library's decoder)."""
    p = ctypes.POINTER(ctypes.c_uint8)()
    w, h = ctypes.c_int(), ctypes.c_int()
    check(_lib.image_load(os.fsencode(path), ctypes.byref(p), ctypes.byref(w), ctypes.byref(h)))
    try:
        return np.ctypeslib.as_array(p, shape=(h.value, w.value, 3)).copy()
    finally:
        _lib.image_free(p)


def decode_image(data, max_pixels=0):
    """Decodes a JPEG or PNG held in memory (bytes); max_pixels > 0 refuses larger images from
    their header, before the pixels are allocated."""
    data = bytes(data)
    p = ctypes.POINTER(ctypes.c_uint8)()
    w, h = ctypes.c_int(), ctypes.c_int()
    check(_lib.image_decode(data, len(data), int(max_pixels), ctypes.byref(p), ctypes.byref(w),
                            ctypes.byref(h)))
    try:
        return np.ctypeslib.as_array(p, shape=(h.value, w.value, 3)).copy()
    finally:
        _lib.image_free(p)


def as_rgb(image, what="image"):
    """Any accepted image -> a C-contiguous H×W×3 uint8 array."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image)
    if hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "size"):
        image = np.asarray(image.convert("RGB"))          # a PIL image
    if not isinstance(image, np.ndarray):
        raise TypeError("%s: expected an H×W×3 uint8 array, a PIL image, a path or encoded bytes, "
                        "got %s" % (what, type(image).__name__))
    if image.dtype != np.uint8:
        raise TypeError("%s: expected dtype uint8, got %s" % (what, image.dtype))
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("%s: expected shape (H, W, 3), got %s" % (what, image.shape))
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("%s: empty image %s" % (what, image.shape))
    if image.shape[0] > 2**31 - 1 or image.shape[1] > 2**31 - 1:
        raise ValueError("%s: image too large %s" % (what, image.shape))
    return np.ascontiguousarray(image)


def u8p(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def f32p(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
