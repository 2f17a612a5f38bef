"""CLIP features the way openai/clip gives them: tokenize, load, encode_text, encode_image."""

import ctypes
import json
import os
import threading

import numpy as np

from . import _lib
from ._errors import InvalidArgument, check
from ._images import as_rgb, f32p, u8p

_tokenizers = {}
_tok_lock = threading.Lock()


class Tokenizer:
    """OpenAI CLIP's BPE tokenizer. vocab: a path, or None for OpenAI's vocabulary from the model
    cache (downloaded when missing unless CARSEG_OFFLINE=1)."""

    def __init__(self, vocab=None, _borrowed=None, _owner=None):
        self._owner = _owner
        if _borrowed is not None:
            self._h, self._own = _borrowed, False
            return
        h = ctypes.c_void_p()
        check(_lib.tokenizer_open(None if vocab is None else os.fsencode(vocab), ctypes.byref(h)))
        self._h, self._own = h, True

    def __del__(self):
        if getattr(self, "_own", False) and self._h:
            _lib.tokenizer_close(self._h)
            self._h = None

    def encode(self, text):
        """SimpleTokenizer.encode: the BPE ids of text, without start/end tokens."""
        b = _text_bytes(text)
        n = _lib.tokenizer_encode(self._h, b, None, 0)
        if n < 0:
            check(_lib.EINVAL)
        out = (ctypes.c_int32 * max(n, 1))()
        _lib.tokenizer_encode(self._h, b, out, n)
        return list(out[:n])

    def tokenize(self, texts, context_length=77, truncate=True):
        """clip.tokenize: an int64 array (n, context_length)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if context_length < 2:
            raise ValueError("context_length must be >= 2, got %r" % (context_length,))
        out = np.zeros((len(texts), context_length), dtype=np.int32)
        for i, t in enumerate(texts):
            b = _text_bytes(t)
            if not truncate:
                n = _lib.tokenizer_encode(self._h, b, None, 0)
                if n < 0:
                    check(_lib.EINVAL)
                if n + 2 > context_length:
                    raise InvalidArgument("Input %s is too long for context length %d"
                                          % (t, context_length), _lib.EINVAL)
            row = out[i]
            if _lib.tokenize(self._h, b, row.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                             context_length) < 0:
                check(_lib.EINVAL, "text %d" % i)
        return out.astype(np.int64)


def _text_bytes(t, what="texts"):
    if not isinstance(t, str):
        raise TypeError("%s must be str, got %s" % (what, type(t).__name__))
    if "\0" in t:
        raise ValueError("%s: %r holds a NUL character" % (what, t))
    return t.encode("utf-8")          # a lone surrogate raises UnicodeEncodeError, as clip does


def tokenizer(vocab=None):
    """The shared Tokenizer of a vocabulary (opened once)."""
    key = None if vocab is None else os.fspath(vocab)
    with _tok_lock:
        t = _tokenizers.get(key)
        if t is None:
            t = _tokenizers[key] = Tokenizer(vocab)
        return t


def tokenize(texts, context_length=77, truncate=True, vocab=None):
    """clip.tokenize(texts, context_length=77, truncate=True) -> int64 array (n, context_length)."""
    return tokenizer(vocab).tokenize(texts, context_length, truncate)


class CLIP:
    """A loaded CLIP model (immutable; share it freely between threads). Use carseg.load()."""

    def __init__(self, name_or_path, vocab=None, precision=None, _borrowed=None, _owner=None):
        self._owner = _owner           # keeps a CaR model alive for borrowed towers
        self._vocab = vocab
        if _borrowed is not None:
            self._h, self._own = _borrowed, False
        else:
            h = ctypes.c_void_p()
            check(_lib.clip_load(os.fsencode(name_or_path), ctypes.byref(h)))
            self._h, self._own = h, True
            if precision is not None:
                check(_lib.clip_set_precision(self._h, _precision(precision)))
        js = ctypes.c_void_p()
        check(_lib.clip_config_json(self._h, ctypes.byref(js)))
        try:
            self.config = json.loads(ctypes.string_at(js).decode())
        finally:
            _lib.libc_free(js)
        self.embed_dim = self.config["embed"]
        self.input_resolution = self.config["image_size"]
        self.context_length = self.config["context"]
        self.logit_scale = float(_lib.clip_logit_scale(self._h))
        self._tok = None

    def __del__(self):
        if getattr(self, "_own", False) and self._h:
            _lib.clip_free(self._h)
            self._h = None

    def __repr__(self):
        c = self.config
        return "<carseg.CLIP embed %d, vision %d layers x %d at %d/%d, text %d layers x %d>" % (
            c["embed"], c["vision_layers"], c["vision_width"], c["image_size"], c["patch"],
            c["text_layers"], c["text_width"])

    @property
    def precision(self):
        return _lib.precision_name(_lib.clip_get_precision(self._h)).decode()

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = tokenizer(self._vocab)
        return self._tok

    def preprocess(self, image):
        """CLIP's preprocessing (Resize bicubic, CenterCrop, Normalize): float32 (3, R, R)."""
        rgb = as_rgb(image)
        R = self.input_resolution
        out = np.empty((3, R, R), dtype=np.float32)
        check(_lib.clip_preprocess(self._h, u8p(rgb), rgb.shape[1], rgb.shape[0], f32p(out)))
        return out

    def encode_text(self, text):
        """Unnormalised text features (n, E) float32 of strings or a token array (n, ctx)."""
        if isinstance(text, (list, tuple)) and len(text) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        if isinstance(text, str) or (isinstance(text, (list, tuple)) and
                                     all(isinstance(t, str) for t in text)):
            tokens = self.tokenizer.tokenize(text, self.context_length)
        else:
            tokens = np.asarray(text)
            if tokens.dtype.kind not in "iu":
                raise TypeError("encode_text: expected strings or an integer token array, got "
                                "dtype %s" % tokens.dtype)
            if tokens.ndim == 1:
                tokens = tokens[None]
            if tokens.ndim != 2 or tokens.shape[1] != self.context_length:
                raise ValueError("encode_text: expected tokens of shape (n, %d), got %s"
                                 % (self.context_length, tokens.shape))
            if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**31):
                raise ValueError("encode_text: token ids out of range")
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        n = tokens.shape[0]
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        if n:
            check(_lib.clip_encode_tokens(self._h,
                                          tokens.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                          n, self.context_length, f32p(out)))
        return out

    def encode_image(self, x, n_blocks=0):
        """Unnormalised image features (n, E) float32. x: an image (H×W×3 uint8 array, PIL image,
        path) or a list of them, preprocessed with CLIP's transform first; or an already
        preprocessed float array (3, H, W) / (n, 3, H, W): R x R (R = input_resolution), or any
        multiple of the patch size, where the positional embedding is resized as CaR's mask
        generator does (carseg_clip_encode_images_hw). n_blocks: transformer blocks to run
        (0 = all; CaR's classifier runs layers - 1)."""
        R, P = self.input_resolution, self.config["patch"]
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            if x.ndim == 3:
                x = x[None]
            if (x.ndim != 4 or x.shape[1] != 3 or x.shape[2] <= 0 or x.shape[3] <= 0
                    or x.shape[2] % P or x.shape[3] % P):
                raise ValueError("encode_image: expected a float array (3, H, W) or (n, 3, H, W) "
                                 "with H and W multiples of the patch size %d (%d x %d natively), got %s"
                                 % (P, R, R, x.shape))
            pixels = np.ascontiguousarray(x, dtype=np.float32)
            if pixels.shape[2:] != (R, R):
                n, H, W = pixels.shape[0], pixels.shape[2], pixels.shape[3]
                out = np.empty((n, self.embed_dim), dtype=np.float32)
                check(_lib.clip_encode_images_hw(self._h, f32p(pixels), n, H, W, int(n_blocks),
                                                 f32p(out)))
                return out
        else:
            images = x if isinstance(x, (list, tuple)) else [x]
            if not images:
                raise ValueError("encode_image: no image")
            pixels = np.stack([self.preprocess(im) for im in images])
        n = pixels.shape[0]
        out = np.empty((n, self.embed_dim), dtype=np.float32)
        check(_lib.clip_encode_images(self._h, f32p(pixels), n, int(n_blocks), f32p(out)))
        return out

    def __call__(self, image, text):
        """(logits_per_image, logits_per_text) as clip's model(image, text)."""
        fi = self.encode_image(image)
        ft = self.encode_text(text)
        fi = fi / np.linalg.norm(fi, axis=1, keepdims=True)
        ft = ft / np.linalg.norm(ft, axis=1, keepdims=True)
        lpi = (self.logit_scale * fi @ ft.T).astype(np.float32)
        return lpi, lpi.T.copy()


def _precision(p):
    if isinstance(p, int):
        return p
    v = ctypes.c_int()
    check(_lib.precision_parse(str(p).encode(), ctypes.byref(v)), "precision")
    return v.value


def load(name, vocab=None, precision=None):
    """Loads a CLIP model: a known name ("ViT-B/16", from the model cache, downloaded when
    missing) or a file (safetensors, OpenAI TorchScript, torch.save state dict). vocab: the BPE
    vocabulary for encode_text on strings (None = OpenAI's). precision: "fp32" (default),
    "bf16x3", "bf16", "auto". Returns a CLIP."""
    return CLIP(name, vocab=vocab, precision=precision)
