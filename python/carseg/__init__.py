"""carseg: CLIP as RNN (CaR) open-vocabulary segmentation on frozen CLIP, from Python.

    import carseg
    seg = carseg.CaR("ViT-B/16", "ViT-L/14")
    r = seg.segment("photo.jpg", ["cat", "sofa", "plant"])
    r.save("labels.png"); print(r.classes, r.scores)

CLIP features as openai/clip gives them: carseg.tokenize, carseg.load(name).encode_text /
encode_image / preprocess. A thin ctypes layer over libcarseg's public C API (docs/python.md)."""

from . import _lib
from ._errors import (Error, FileError, FormatError, InvalidArgument, ModelError, NetworkError,
                      OutOfMemory)
from ._images import decode_image, load_image
from .car import (CaR, CaRModel, Prepared, Result, SamModel, crf, encode_labels_png, preset_classes,
                  presets, rle_decode, rle_encode)
from .clip import CLIP, Tokenizer, load, tokenize, tokenizer

__version__ = _lib.version().decode()
ABI_VERSION = _lib.ABI_VERSION
library_path = _lib.path


def set_threads(n):
    """Compute threads of the calling thread's carseg calls (0 = all cores)."""
    _lib.set_threads(int(n))


def allow_download(allow):
    """Whether model names may be downloaded into the cache (CARSEG_OFFLINE=1 forbids it)."""
    _lib.models_allow_download(1 if allow else 0)


__all__ = ["SamModel", "CaR", "CaRModel", "CLIP", "Prepared", "Result", "Tokenizer", "Error", "FileError",
           "FormatError", "InvalidArgument", "ModelError", "NetworkError", "OutOfMemory", "crf",
           "decode_image", "encode_labels_png", "load", "load_image", "preset_classes", "presets",
           "rle_decode", "rle_encode", "set_threads", "allow_download", "tokenize", "tokenizer"]
