"""CaR (CLIP as RNN): models shared between threads, one segmenter per CaR object, results."""

import ctypes
import json
import math
import os
import tempfile
import threading

import numpy as np

from . import _lib
from ._errors import InvalidArgument, check
from ._images import as_rgb, f32p, u8p
from .clip import CLIP, Tokenizer, _precision

_STAGES = ("prepare", "text", "cam", "prompt", "classify", "crf", "total")
_OPTION_KEYS = ("preset", "eta", "theta", "lambda_", "prompts", "stuff_prompts", "bg_words",
                "templates", "crf", "crf_params", "fix", "keep_cams", "threads", "sam_iom",
                "sam_min_pred", "sam_iou", "sam_points", "sam_pred_iou", "sam_stability",
                "sam_nms")
_SAM_GEN_KEYS = ("sam_points", "sam_pred_iou", "sam_stability", "sam_nms")


def _int(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise TypeError("%s must be an integer, got %r" % (name, v))
    if not lo <= int(v) <= hi:
        raise ValueError("%s %d: not in [%d, %d]" % (name, v, lo, hi))
    return int(v)
_CRF_KEYS = ("iters", "pos_sxy", "pos_w", "bi_sxy", "bi_srgb", "bi_w")


class CaRModel:
    """The generator CLIP, the classifier CLIP and the tokenizer, loaded once and immutable: any
    number of CaR segmenters (one per thread) share one. Names ("ViT-B/16") or paths; None =
    the paper's ViT-B/16 generator and ViT-L/14 classifier; vocab None = OpenAI's."""

    def __init__(self, generator=None, classifier=None, vocab=None, precision=None):
        h = ctypes.c_void_p()
        enc = (lambda s: None if s is None else os.fsencode(s))
        check(_lib.car_model_open(enc(generator), enc(classifier), enc(vocab), ctypes.byref(h)))
        self._h = h
        if precision is not None:
            check(_lib.car_model_set_precision(self._h, _precision(precision)), "precision")
        self.generator = CLIP(None, _borrowed=_lib.car_model_generator(self._h), _owner=self)
        self.classifier = CLIP(None, _borrowed=_lib.car_model_classifier(self._h), _owner=self)
        tok = Tokenizer(_borrowed=_lib.car_model_tokenizer(self._h), _owner=self)
        self.generator._tok = self.classifier._tok = tok
        self.tokenizer = tok

    @property
    def precision(self):
        return _lib.precision_name(_lib.car_model_precision(self._h)).decode()

    def __del__(self):
        if getattr(self, "_h", None):
            _lib.car_model_close(self._h)
            self._h = None


def _fixes(fix):
    if fix is None:
        return 0
    if isinstance(fix, (int, np.integer)) and not isinstance(fix, bool):
        return _int("fix", fix, 0, 2**32 - 1)
    if not isinstance(fix, str):
        fix = ",".join(fix)
    v = ctypes.c_uint()
    check(_lib.fixes_parse(fix.encode(), ctypes.byref(v)), "fix")
    return v.value


class _Opts:
    """carseg_options built from keyword arguments, with the memory its pointers need."""

    def __init__(self, kw):
        unknown = set(kw) - set(_OPTION_KEYS)
        if unknown:
            raise TypeError("unknown option(s): %s (known: %s)"
                            % (", ".join(sorted(unknown)), ", ".join(_OPTION_KEYS)))
        o = _lib.Options()
        _lib.options_init(ctypes.byref(o))
        keep = []

        def s(v, what="option"):
            v = str(v)
            if "\0" in v:
                raise ValueError("%s: %r holds a NUL character" % (what, v))
            b = v.encode()
            keep.append(b)
            return b
        if kw.get("preset") is not None:
            o.preset = s(kw["preset"])
        for k in ("eta", "theta", "lambda_"):
            if kw.get(k) is not None:
                setattr(o, k, float(kw[k]))
        for k in ("prompts", "stuff_prompts"):
            v = kw.get(k)
            if v is not None:
                setattr(o, k, s(v if isinstance(v, str) else ",".join(v)))
        bg = kw.get("bg_words")
        if bg is not None:
            if isinstance(bg, str):
                bg = [w for w in bg.split(",") if w.strip()]
            bg = [str(w) for w in bg]
            arr = (ctypes.c_char_p * max(len(bg), 1))(*[s(w, "bg_words") for w in bg])
            keep.append(arr)
            o.bg_words, o.n_bg_words = arr, len(bg)
        t = kw.get("templates")
        if t is not None:
            t = {15: "semantic", 1: "single", 0: "single"}.get(t, t)
            o.templates = s(t)
        if kw.get("crf") is not None:
            o.crf = 1 if kw["crf"] else 0
        cp = kw.get("crf_params")
        if cp:
            bad = set(cp) - set(_CRF_KEYS)
            if bad:
                raise TypeError("crf_params: unknown key(s) %s (known: %s)"
                                % (", ".join(sorted(bad)), ", ".join(_CRF_KEYS)))
            for k, v in cp.items():
                setattr(o.crf_params, k, _int("crf_params iters", v, 0, 2**31 - 1)
                        if k == "iters" else float(v))
        o.fixes = _fixes(kw.get("fix"))
        o.keep_cams = 1 if kw.get("keep_cams") else 0
        if kw.get("threads") is not None:
            o.threads = _int("threads", kw["threads"], 0, 65536)
        for k, f in (("sam_iom", "iom_thres"), ("sam_min_pred", "min_pred"), ("sam_iou", "iou_thres")):
            if kw.get(k) is not None:
                v = float(kw[k])
                if not 0 <= v <= 1:
                    raise ValueError("%s %g: not in [0, 1]" % (k, v))
                setattr(o.sam, f, v)
        self.o, self._keep, self.kw = o, keep, kw

    def ref(self):
        return ctypes.byref(self.o)


def _strings(items, what):
    if isinstance(items, str):
        items = [c for c in items.split("|" if "|" in items else ",")]
    items = list(items)
    for c in items:
        if not isinstance(c, str):
            raise TypeError("%s must be str, got %s" % (what, type(c).__name__))
        if "\0" in c:
            raise ValueError("%s: %r holds a NUL character" % (what, c))
    items = [c.strip() for c in items]
    if any(not c for c in items):
        raise ValueError("%s: an empty name" % what)
    return items


class Prepared:
    """An image with the generator trunk, the affinity and the prompt backgrounds computed once;
    segment it with any number of class lists (through the CaR that prepared it)."""

    def __init__(self, car, h, w, hgt, rgb):
        self._car, self._h, self.width, self.height = car, h, w, hgt
        self._rgb = rgb                     # CaR + SAM runs its generator on the pixels
        self._lock = threading.Lock()       # one call at a time on a prepared image

    def __del__(self):
        if getattr(self, "_h", None):
            _lib.prepared_free(self._h)
            self._h = None


class Result:
    """One segmentation. labels: (H, W) uint16, 0 = background, k = classes[k-1] (refer: 1 =
    the merged mask); masks: (n, H, W) bool, each class's (phrase's) final mask; scores: (n)
    float32 (0 = dropped); classes; rounds: one dict per round of the recurrence (pass, round,
    live, scores, survivors, dropped); timings: ms per stage; timings_cpu: the process's CPU ms
    per stage (all its threads); cams: (n, H, W) float32 with
    keep_cams, else None; json: the JSON `carseg segment` writes for the image."""

    def __init__(self, r, image_name=None):
        self.width, self.height = _lib.result_width(r), _lib.result_height(r)
        H, W = self.height, self.width
        self.refer = bool(_lib.result_is_refer(r))
        n = _lib.result_count(r)
        self.classes = [_lib.result_class(r, k).decode("utf-8", "replace") for k in range(n)]
        self.scores = np.array([_lib.result_score(r, k) for k in range(n)], dtype=np.float32)
        self.labels = np.ctypeslib.as_array(_lib.result_labels(r), shape=(H, W)).copy()
        if n:
            self.masks = np.ctypeslib.as_array(_lib.result_mask(r, 0), shape=(n, H, W)) != 0
        else:
            self.masks = np.zeros((0, H, W), dtype=bool)
        c0 = _lib.result_cams(r, 0) if n else None
        self.cams = np.ctypeslib.as_array(c0, shape=(n, H, W)).copy() if c0 else None
        self.rounds = []
        counters = {}
        for i in range(_lib.result_rounds(r)):
            live = ctypes.POINTER(ctypes.c_int)()
            sc = ctypes.POINTER(ctypes.c_float)()
            sv = ctypes.POINTER(ctypes.c_uint8)()
            m = _lib.result_round(r, i, ctypes.byref(live), ctypes.byref(sc), ctypes.byref(sv))
            p = _lib.result_round_pass(r, i)
            counters[p] = counters.get(p, 0) + 1
            li = [live[j] for j in range(m)]
            keep = [bool(sv[j]) for j in range(m)]
            self.rounds.append({
                "pass": p, "round": counters[p],
                "live": [self.classes[j] for j in li],
                "scores": [float(sc[j]) for j in range(m)],
                "survivors": [self.classes[j] for j, k in zip(li, keep) if k],
                "dropped": [self.classes[j] for j, k in zip(li, keep) if not k]})
        self.timings, self.timings_cpu = {}, {}
        for st in _STAGES:
            t = _lib.result_timing(r, st.encode())
            if t >= 0:
                self.timings[st] = t
            t = _lib.result_timing(r, (st + ".cpu").encode()) if st != "total" else -1
            if t >= 0:
                self.timings_cpu[st] = t
        js = ctypes.c_void_p()
        check(_lib.result_json(r, None if image_name is None else str(image_name).encode(),
                               ctypes.byref(js)))
        try:
            self.json = ctypes.string_at(js).decode("utf-8")
        finally:
            _lib.libc_free(js)

    @property
    def mask(self):
        """Referring mode: the merged mask (H, W) bool."""
        return self.labels == 1

    def __repr__(self):
        found = [(c, float(s)) for c, s in zip(self.classes, self.scores) if s > 0]
        return "<carseg.Result %dx%d, %d rounds, found %s>" % (self.width, self.height,
                                                              len(self.rounds), found)

    def label_png(self):
        """The label map as PNG bytes, byte for byte what `carseg segment` writes as NAME.png."""
        n_labels = 2 if self.refer else len(self.classes) + 1
        return encode_labels_png(self.labels, n_labels)

    def save(self, path):
        """Writes label_png() to path atomically (a temporary file, then a rename)."""
        _write_atomic(path, self.label_png())


def encode_labels_png(labels, n_labels=0):
    labels = np.ascontiguousarray(labels)
    if labels.dtype != np.uint16 or labels.ndim != 2:
        raise TypeError("labels: expected a (H, W) uint16 array, got %s %s"
                        % (labels.dtype, labels.shape))
    png = ctypes.POINTER(ctypes.c_uint8)()
    ln = ctypes.c_size_t()
    check(_lib.labels_encode_png(labels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)),
                                 labels.shape[1], labels.shape[0], int(n_labels),
                                 ctypes.byref(png), ctypes.byref(ln)))
    try:
        return ctypes.string_at(png, ln.value)
    finally:
        _lib.libc_free(png)


def _write_atomic(path, data):
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError("%s: no such folder %s" % (path, d))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".carseg-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class CaR:
    """A CaR segmenter: CaR(generator, classifier, vocab=None, **options), or
    CaR(model=a_CaRModel_or_CaR, **options) to share loaded models (one CaR per thread).
    Options (keyword arguments, also accepted per call by segment/refer): preset, eta, theta,
    lambda_, prompts, stuff_prompts, bg_words, templates ("semantic" | "single"), crf (bool),
    crf_params (dict: iters, pos_sxy, pos_w, bi_sxy, bi_srgb, bi_w), fix (["q3", ...] or
    "bugs" / "all"), keep_cams, threads. precision ("fp32", "bf16x3", "bf16", "auto") applies
    when this call opens the models."""

    def __init__(self, generator=None, classifier=None, vocab=None, *, model=None,
                 precision=None, sam=None, **options):
        if model is None:
            model = CaRModel(generator, classifier, vocab, precision)
        elif isinstance(model, CaR):
            model = model.model
        elif not isinstance(model, CaRModel):
            raise TypeError("model must be a CaRModel or a CaR, got %s" % type(model).__name__)
        self.model = model
        _Opts(options)                      # checks the names now
        self.options = dict(options)
        h = ctypes.c_void_p()
        check(_lib.segmenter_new(model._h, ctypes.byref(h)))
        self._h = h
        self._lock = threading.Lock()       # one thread at a time per segmenter
        self.sam = None
        if sam is None and any(options.get(k) is not None for k in _SAM_GEN_KEYS):
            raise ValueError("sam_* generator options need CaR(..., sam=MODEL)")
        if sam is not None:
            self.sam = sam if isinstance(sam, SamModel) else SamModel(sam)

    def __del__(self):
        if getattr(self, "_h", None):
            _lib.segmenter_free(self._h)
            self._h = None

    def _sam_records(self, im, o):
        """CaR + SAM: the generator's records of the prepared image, set as o's sam_masks."""
        prm = _lib.SamAmgParams()
        _lib.sam_amg_init(ctypes.byref(prm))
        for k, f in (("sam_points", "points_per_side"), ("sam_pred_iou", "pred_iou_thresh"),
                     ("sam_stability", "stability_score_thresh"), ("sam_nms", "box_nms_thresh")):
            v = o.kw.get(k)
            if v is not None:
                setattr(prm, f, _int(k, v, 1, 1024) if f == "points_per_side" else float(v))
        rgb = im._rgb
        img = ctypes.c_void_p()
        check(_lib.sam_set_image(self.sam._h, u8p(rgb), rgb.shape[1], rgb.shape[0],
                                 ctypes.byref(img)))
        recs = ctypes.c_void_p()
        try:
            check(_lib.sam_generate(self.sam._h, img, ctypes.byref(prm), ctypes.byref(recs)))
        finally:
            _lib.sam_image_free(img)
        sm = _lib.SamMasks()
        st = _lib.sam_records_masks(recs, ctypes.byref(sm))
        if st:
            _lib.sam_records_free(recs)
            check(st)
        o.o.sam_masks = ctypes.addressof(sm)
        o._keep.append(sm)
        return recs

    def _opts(self, kw):
        merged = dict(self.options)
        merged.update(kw)
        return _Opts(merged)

    def prepare(self, image):
        """Computes the image's class-independent work once: a Prepared for segment/refer."""
        rgb = as_rgb(image)
        h = ctypes.c_void_p()
        with self._lock:
            check(_lib.prepare(self._h, u8p(rgb), rgb.shape[1], rgb.shape[0], None,
                               ctypes.byref(h)))
        return Prepared(self, h, rgb.shape[1], rgb.shape[0], rgb)

    def _prepared(self, image):
        if isinstance(image, Prepared):
            if image._car.model is not self.model:
                raise ValueError("this prepared image belongs to another model")
            return image
        return self.prepare(image)

    def segment(self, image, classes=None, image_name=None, **options):
        """Semantic segmentation: classes (a list, or "a,b,c" / "a|b" as the CLI) or
        preset="voc" (its class list and thing/stuff passes). Returns a Result."""
        o = self._opts(options)
        if classes is None:
            if not o.o.preset:
                raise ValueError("segment: give classes or a preset")
            names, arr, n = None, None, 0
        else:
            names = _strings(classes, "classes")
            if not names:
                raise ValueError("segment: empty class list")
            arr = (ctypes.c_char_p * len(names))(*[c.encode() for c in names])
            n = len(names)
        check(_lib.options_check(o.ref(), 0))
        if self.sam is None and any(o.kw.get(k) is not None for k in _SAM_GEN_KEYS):
            raise ValueError("sam_* generator options need CaR(..., sam=MODEL)")
        im = self._prepared(image)
        r = ctypes.c_void_p()
        recs = None
        with self._lock, im._lock:
            try:
                if self.sam is not None:
                    recs = self._sam_records(im, o)
                check(_lib.segment(self._h, im._h, arr, n, o.ref(), ctypes.byref(r)))
            finally:
                if recs is not None:
                    _lib.sam_records_free(recs)
        try:
            return Result(r, image_name)
        finally:
            _lib.result_free(r)

    def refer(self, image, phrases, image_name=None, **options):
        """Referring segmentation: phrases (a str or a list) that describe one object. The
        Result's labels / mask hold the merged mask; masks and scores are per phrase."""
        if isinstance(phrases, str):
            phrases = [phrases]
        names = _strings(phrases, "phrases")
        if not names:
            raise ValueError("refer: no phrase")
        o = self._opts(options)
        check(_lib.options_check(o.ref(), 1))
        arr = (ctypes.c_char_p * len(names))(*[c.encode() for c in names])
        im = self._prepared(image)
        r = ctypes.c_void_p()
        with self._lock, im._lock:
            check(_lib.refer(self._h, im._h, arr, len(names), o.ref(), ctypes.byref(r)))
        try:
            return Result(r, image_name)
        finally:
            _lib.result_free(r)


class SamModel:
    """A SAM or HQ-SAM checkpoint (torch.save as released, or safetensors), for CaR + SAM:
    CaR(..., sam=SamModel(path) or path). Immutable: share it between CaRs and threads."""

    def __init__(self, path):
        h = ctypes.c_void_p()
        check(_lib.sam_load(os.fsencode(path), ctypes.byref(h)))
        self._h = h

    def __del__(self):
        if getattr(self, "_h", None):
            _lib.sam_free(self._h)
            self._h = None


def presets():
    """The names of the reference's dataset presets."""
    return [_lib.preset_name(i).decode() for i in range(_lib.presets_count())]


def preset_classes(name):
    """A preset's class list (label k = classes[k-1]); [] for the referring presets."""
    arr = ctypes.POINTER(ctypes.c_char_p)()
    n = ctypes.c_int()
    check(_lib.preset_classes(str(name).encode(), ctypes.byref(arr), ctypes.byref(n)))
    return [arr[i].decode() for i in range(n.value)]


def crf(probs, image, iters=10, pos_sxy=1.0, pos_w=3.0, bi_sxy=67.0, bi_srgb=3.0, bi_w=4.0,
        features="rgb", marginals=False):
    """Dense CRF (pydensecrf's DenseCRF2D as CaR runs it): probs (C, H, W) float32
    probabilities, image (H, W, 3) uint8. features: "rgb" (the image as the colour features) or
    "car" (CaR's BGR-minus-mean wrapped to uint8, its quirk Q4). Returns labels (H, W) uint16,
    and the marginals (C, H, W) float32 too with marginals=True."""
    p = np.asarray(probs)
    if p.dtype.kind != "f":
        raise TypeError("probs: expected a float array, got %s" % p.dtype)
    if p.ndim != 3:
        raise ValueError("probs: expected shape (C, H, W), got %s" % (p.shape,))
    p = np.ascontiguousarray(p, dtype=np.float32)
    C, H, W = p.shape
    rgb = as_rgb(image)
    if rgb.shape[:2] != (H, W):
        raise ValueError("image: %s does not match probs' (H, W) = (%d, %d)"
                         % (rgb.shape[:2], H, W))
    if features == "car":
        feat = np.empty_like(rgb)
        _lib.crf_features_car(u8p(rgb), W, H, u8p(feat))
    elif features == "rgb":
        feat = rgb
    else:
        raise ValueError("features: 'rgb' or 'car', got %r" % (features,))
    prm = _lib.CrfParams(int(iters), pos_sxy, pos_w, bi_sxy, bi_srgb, bi_w)
    labels = np.empty((H, W), dtype=np.uint16)
    q = np.empty((C, H, W), dtype=np.float32) if marginals else None
    check(_lib.crf(f32p(p), C, H, W, u8p(feat), ctypes.byref(prm),
                   labels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)),
                   f32p(q) if q is not None else None))
    return (labels, q) if marginals else labels


def rle_encode(mask):
    """COCO compressed RLE (pycocotools' counts string) of a (H, W) mask."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError("mask: expected shape (H, W), got %s" % (m.shape,))
    m = np.ascontiguousarray(m != 0, dtype=np.uint8)
    out = ctypes.c_void_p()
    check(_lib.rle_encode(u8p(m), m.shape[0], m.shape[1], ctypes.byref(out)))
    try:
        return ctypes.string_at(out).decode()
    finally:
        _lib.libc_free(out)


def rle_decode(counts, height, width):
    """The (H, W) bool mask of a COCO compressed RLE counts string (or {"size", "counts"})."""
    if isinstance(counts, dict):
        height, width = counts["size"]
        counts = counts["counts"]
    if isinstance(counts, str):
        counts = counts.encode()
    m = np.empty((int(height), int(width)), dtype=np.uint8)
    check(_lib.rle_decode(bytes(counts), int(height), int(width), u8p(m), None, None), "rle")
    return m != 0
