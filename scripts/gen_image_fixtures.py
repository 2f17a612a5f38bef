#!/usr/bin/python3
"""Reference outputs for tests/test_image.c and tests/test_imgproc.c, from Pillow 9.4 and OpenCV 4.6.

Usage: /usr/bin/python3 scripts/gen_image_fixtures.py OUTDIR SHARED_DIR [SECTION ...]
Sections: decode resize clip cv (default: all). Writes OUTDIR/manifest_<section>.json plus the
input files and the expected arrays (.npy). The C tests run this at test time into a temporary
directory, so nothing large is committed.

Pillow is the ground truth for decoding and resizing because the reference code reads every image
with PIL.Image.open(...).convert("RGB") and resizes with Pillow; OpenCV for the visual prompts and the
CAM upsampling (cv2.GaussianBlur, cvtColor, cv2.resize).
"""
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

OUT = sys.argv[1]
SHARED = sys.argv[2]
SECTIONS = sys.argv[3:] or ["decode", "resize", "clip", "cv"]
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(1234)


def p(*a):
    return os.path.join(OUT, *a)


def smooth_image(h, w, c, seed):
    """A photo-like test image: smooth gradients + noise + hard edges (exercises clipping)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, c))
    for k in range(c):
        img[..., k] = 128 + 100 * np.sin(xx / (3 + 2 * k) + yy / (5 + k)) + r.normal(0, 20, (h, w))
    img[h // 3:(2 * h) // 3, w // 4:w // 2] = 255 if seed % 2 else 0
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# raw PNG writer (every colour type / bit depth / Adam7; Pillow cannot write most of them)

def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)


def pack_rows(samples, bd):
    """samples: (h, w*ch) integer array -> list of packed row bytes."""
    rows = []
    for r in samples:
        if bd == 16:
            rows.append(r.astype(">u2").tobytes())
        elif bd == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:
            per = 8 // bd
            n = (len(r) + per - 1) // per
            out = bytearray(n)
            for i, v in enumerate(r):
                out[i // per] |= int(v) << (8 - bd * (i % per + 1))
            rows.append(bytes(out))
    return rows


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(path, arr, ct, bd, plte=None, trns=None, interlace=False, filt=0):
    """arr: (h, w, ch) samples. filt: PNG filter type used on every row (0 none, 1 sub, 2 up...)."""
    h, w, ch = arr.shape
    bpp = max(1, ch * bd // 8)

    def filtered(rows):
        out = b""
        prev = bytes(len(rows[0])) if rows else b""
        for r in rows:
            if filt == 1:
                f = bytes((r[i] - (r[i - bpp] if i >= bpp else 0)) & 255 for i in range(len(r)))
            elif filt == 2:
                f = bytes((r[i] - prev[i]) & 255 for i in range(len(r)))
            else:
                f = r
            out += bytes([filt]) + f
            prev = r
        return out

    if interlace:
        raw = b""
        for x0, y0, dx, dy in ADAM7:
            sub = arr[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += filtered(pack_rows(sub.reshape(sub.shape[0], -1), bd))
    else:
        raw = filtered(pack_rows(arr.reshape(h, -1), bd))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bd, ct, 0, 0, int(interlace)))
    if plte is not None:
        data += chunk(b"PLTE", bytes(plte))
    if trns is not None:
        data += chunk(b"tRNS", bytes(trns))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def pillow_rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def gen_decode():
    cases = []
    os.makedirs(p("dec"), exist_ok=True)

    def add(name, **extra):
        path = p("dec", name)
        exp = pillow_rgb(path)
        np.save(path + ".rgb.npy", exp)
        cases.append(dict(file=path, rgb=path + ".rgb.npy", **extra))

    h, w = 23, 17
    for bd in (1, 2, 4, 8, 16):
        a = rng.integers(0, 1 << bd, (h, w, 1))
        if bd == 16:   # mix small and large values: mode "I" clips at 255
            a[::2] = rng.integers(0, 300, (a[::2].shape))
        for il in (False, True):
            n = f"gray{bd}{'_i' if il else ''}.png"
            write_png(p("dec", n), a, 0, bd, interlace=il, filt=2 if il else 1)
            e = {}
            if bd <= 8:
                idx = np.asarray(Image.open(p("dec", n)))
                if idx.dtype == bool:
                    idx = idx.astype(np.uint8) * 255
                np.save(p("dec", n + ".idx.npy"), idx.astype(np.uint8))
                e["idx"] = p("dec", n + ".idx.npy")
            if bd in (8, 16):
                np.save(p("dec", n + ".u16.npy"), a[..., 0].astype(np.uint16))
                e["u16"] = p("dec", n + ".u16.npy")
            add(n, **e)
    write_png(p("dec", "gray8_trns.png"), rng.integers(0, 256, (h, w, 1)), 0, 8, trns=b"\x00\x05")
    add("gray8_trns.png")
    for bd in (8, 16):
        a = rng.integers(0, 1 << bd, (h, w, 2))
        write_png(p("dec", f"gray_alpha{bd}.png"), a, 4, bd)
        add(f"gray_alpha{bd}.png")
        for ch, ct in ((3, 2), (4, 6)):
            a = rng.integers(0, 1 << bd, (h, w, ch))
            for il in (False, True):
                n = f"{'rgba' if ch == 4 else 'rgb'}{bd}{'_i' if il else ''}.png"
                write_png(p("dec", n), a, ct, bd, interlace=il, filt=1)
                add(n)
    write_png(p("dec", "rgb8_trns.png"), rng.integers(0, 256, (h, w, 3)), 2, 8, trns=b"\0\1\0\2\0\3")
    add("rgb8_trns.png")
    for bd in (1, 2, 4, 8):
        for npal, tr in ((1 << bd, None), (max(1, (1 << bd) // 2 - 1), b"\x00\x80\xff")):
            a = rng.integers(0, 1 << bd, (h, w, 1))
            pal = rng.integers(0, 256, npal * 3).astype(np.uint8)
            n = f"pal{bd}_{npal}{'_t' if tr else ''}.png"
            write_png(p("dec", n), a, 3, bd, plte=pal, trns=tr)
            np.save(p("dec", n + ".idx.npy"), np.asarray(Image.open(p("dec", n))).astype(np.uint8))
            add(n, idx=p("dec", n + ".idx.npy"))
    # Pillow-written files (zlib levels/filters of a real encoder)
    img = smooth_image(37, 41, 3, 1)
    Image.fromarray(img).save(p("dec", "pil_rgb.png"))
    add("pil_rgb.png")
    Image.fromarray(img).quantize(7).save(p("dec", "pil_p.png"))
    np.save(p("dec", "pil_p.png.idx.npy"), np.asarray(Image.open(p("dec", "pil_p.png"))).astype(np.uint8))
    add("pil_p.png", idx=p("dec", "pil_p.png.idx.npy"))
    # JPEG: Pillow encoder with several subsamplings, progressive, gray, CMYK; odd sizes
    for (hh, ww) in ((37, 41), (1, 1), (16, 16), (9, 130)):
        img = smooth_image(hh, ww, 3, hh)
        for sub in (0, 1, 2):
            n = f"j{hh}x{ww}_s{sub}.jpg"
            Image.fromarray(img).save(p("dec", n), quality=90, subsampling=sub)
            add(n)
        Image.fromarray(img).save(p("dec", f"j{hh}x{ww}_prog.jpg"), quality=80, progressive=True)
        add(f"j{hh}x{ww}_prog.jpg")
        Image.fromarray(img[..., 1]).save(p("dec", f"j{hh}x{ww}_gray.jpg"), quality=85)
        np.save(p("dec", f"j{hh}x{ww}_gray.jpg.idx.npy"), np.asarray(Image.open(p("dec", f"j{hh}x{ww}_gray.jpg"))))
        add(f"j{hh}x{ww}_gray.jpg", idx=p("dec", f"j{hh}x{ww}_gray.jpg.idx.npy"))
        cmyk = np.concatenate([img, img[..., :1] // 2], axis=2)
        Image.fromarray(cmyk, "CMYK").save(p("dec", f"j{hh}x{ww}_cmyk.jpg"), quality=90)
        add(f"j{hh}x{ww}_cmyk.jpg")
    # the real data: every JPEG and PNG under SHARED/data
    for root, _, files in sorted(os.walk(os.path.join(SHARED, "data"))):
        for f in sorted(files):
            if not f.lower().endswith((".jpg", ".png")):
                continue
            src = os.path.join(root, f)
            tag = os.path.relpath(src, SHARED).replace("/", "_")
            exp = pillow_rgb(src)
            np.save(p("dec", tag + ".rgb.npy"), exp)
            c = dict(file=src, rgb=p("dec", tag + ".rgb.npy"))
            with Image.open(src) as im:
                if im.mode == "P":
                    np.save(p("dec", tag + ".idx.npy"), np.asarray(im))
                    c["idx"] = p("dec", tag + ".idx.npy")
            cases.append(c)
    # 16-bit label TIFFs (ADE-847 / PC-459 style), raw and LZW, and 8-bit
    lab = rng.integers(0, 3000, (h, w)).astype(np.uint16)
    for comp in (None, "tiff_lzw", "tiff_adobe_deflate"):
        n = f"lab16_{comp or 'raw'}.tif"
        Image.fromarray(lab, "I;16").save(p("dec", n), compression=comp)
        back = np.asarray(Image.open(p("dec", n))).astype(np.uint16)
        assert (back == lab).all()
        np.save(p("dec", n + ".u16.npy"), back)
        cases.append(dict(file=p("dec", n), u16=p("dec", n + ".u16.npy")))
    lab8 = rng.integers(0, 256, (h, w)).astype(np.uint8)
    Image.fromarray(lab8).save(p("dec", "lab8.tif"))
    np.save(p("dec", "lab8.tif.u16.npy"), lab8.astype(np.uint16))
    cases.append(dict(file=p("dec", "lab8.tif"), u16=p("dec", "lab8.tif.u16.npy")))
    with open(p("manifest_decode.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=0)


def gen_resize():
    """Pillow Image.resize(BICUBIC) on real images and odd synthetic sizes. Inputs as PNG."""
    os.makedirs(p("rs"), exist_ok=True)
    cases = []
    srcs = []
    for rel in ("data/photos/chelsea.png", "data/photos/camera.png", "data/voc_samples/114.png",
                "data/voc_mini/VOCdevkit/VOC2012/JPEGImages/2011_000025.jpg",
                "data/voc_mini/VOCdevkit/VOC2012/JPEGImages/sample_294.jpg"):
        full = os.path.join(SHARED, rel)
        if os.path.exists(full):
            srcs.append(full)
    for i, (hh, ww) in enumerate(((23, 17), (1, 1), (1, 9), (7, 1), (64, 48))):
        path = p("rs", f"syn{hh}x{ww}.png")
        Image.fromarray(smooth_image(hh, ww, 3, i)).save(path)
        srcs.append(path)
    for src in srcs:
        im = Image.open(src).convert("RGB")
        W, H = im.size
        sizes = [(224, 224), ((W + 15) // 16 * 16, (H + 15) // 16 * 16), (W, H), (W + 1, H),
                 (W, H + 3), (max(1, W // 3), max(1, H // 7)), (17, 23), (1, 1), (W * 2 + 1, 5)]
        if W > 100:
            sizes.append((W // 10, H // 10))
        for (w, h) in sizes:
            out = np.asarray(im.resize((w, h), Image.BICUBIC))
            n = f"{os.path.basename(src)}_{w}x{h}.npy"
            np.save(p("rs", n), out)
            cases.append(dict(file=src, w=w, h=h, out=p("rs", n)))
    with open(p("manifest_resize.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=0)


def torch_normalize(img_u8):
    """torchvision ToTensor + Normalize(CLIP mean, std), float32 exactly as torch computes it."""
    import torch
    t = torch.from_numpy(np.array(img_u8, copy=True)).permute(2, 0, 1).contiguous()
    t = t.to(dtype=torch.float32).div(255)
    mean = torch.as_tensor((0.48145466, 0.4578275, 0.40821073), dtype=torch.float32)
    std = torch.as_tensor((0.26862954, 0.26130258, 0.27577711), dtype=torch.float32)
    return t.sub_(mean[:, None, None]).div_(std[:, None, None]).numpy()


def clip_transform(im, n_px):
    """CLIP's _transform(n_px) without torchvision: Resize(n_px) bicubic, CenterCrop, RGB, ..."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = n_px, int(n_px * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    im = im.resize((nw, nh), Image.BICUBIC)
    top = int(round((nh - n_px) / 2.0))
    left = int(round((nw - n_px) / 2.0))
    im = im.crop((left, top, left + n_px, top + n_px)).convert("RGB")
    return torch_normalize(np.asarray(im))


def gen_clip():
    os.makedirs(p("clip"), exist_ok=True)
    cases = []
    try:
        import torch  # noqa: F401
    except ImportError:
        with open(p("manifest_clip.json"), "w") as f:
            json.dump({"cases": [], "skip": "python3 lacks torch"}, f)
        return
    srcs = [os.path.join(SHARED, r) for r in (
        "data/photos/chelsea.png", "data/voc_mini/VOCdevkit/VOC2012/JPEGImages/2011_000025.jpg",
        "data/photos/camera.png", "data/photos/coffee.png", "data/voc_samples/0.png")]
    for (hh, ww) in ((300, 227), (227, 300), (225, 229), (100, 50)):   # odd crop offsets (x.5)
        path = p("clip", f"syn{hh}x{ww}.png")
        Image.fromarray(smooth_image(hh, ww, 3, hh)).save(path)
        srcs.append(path)
    for src in srcs:
        if not os.path.exists(src):
            continue
        n = os.path.basename(src)
        with Image.open(src) as im:
            np.save(p("clip", n + ".224.npy"), clip_transform(im, 224))
            np.save(p("clip", n + ".32.npy"), clip_transform(im, 32))
            W, H = im.size
            w16, h16 = (W + 15) // 16 * 16, (H + 15) // 16 * 16
            ex = torch_normalize(np.asarray(im.convert("RGB").resize((w16, h16), Image.BICUBIC)))
            np.save(p("clip", n + ".exact.npy"), ex)
        cases.append(dict(file=src, crop224=p("clip", n + ".224.npy"), crop32=p("clip", n + ".32.npy"),
                          exact=p("clip", n + ".exact.npy"), w16=w16, h16=h16))
    with open(p("manifest_clip.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=0)


def gen_cv():
    import cv2
    os.makedirs(p("cv"), exist_ok=True)
    cases = []
    srcs = []
    for rel in ("data/photos/chelsea.png", "data/voc_samples/8.png"):
        full = os.path.join(SHARED, rel)
        if os.path.exists(full):
            srcs.append(np.asarray(Image.open(full).convert("RGB")))
    for (hh, ww) in ((1, 1), (1, 2), (2, 1), (2, 2), (3, 5), (7, 8), (8, 7), (15, 15), (16, 9), (23, 17), (40, 33)):
        srcs.append(rng.integers(0, 256, (hh, ww, 3)).astype(np.uint8))
    srcs.append(smooth_image(31, 29, 3, 5))
    for i, img in enumerate(srcs):
        img = np.ascontiguousarray(img)
        np.save(p("cv", f"in{i}.npy"), img)
        blur = cv2.GaussianBlur(img, (15, 15), 0)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        np.save(p("cv", f"blur{i}.npy"), blur)
        np.save(p("cv", f"gray{i}.npy"), gray)
        c = dict(img=p("cv", f"in{i}.npy"), blur15=p("cv", f"blur{i}.npy"), gray=p("cv", f"gray{i}.npy"))
        if i < 4:   # other kernel sizes / single channel
            for k in (3, 5, 7, 9, 31):
                np.save(p("cv", f"blur{i}_k{k}.npy"), cv2.GaussianBlur(img, (k, k), 0))
                c[f"blur{k}"] = p("cv", f"blur{i}_k{k}.npy")
            np.save(p("cv", f"in{i}_c1.npy"), np.ascontiguousarray(img[..., 1]))
            np.save(p("cv", f"blur{i}_c1.npy"), cv2.GaussianBlur(np.ascontiguousarray(img[..., 1]), (15, 15), 0))
            c["img_c1"] = p("cv", f"in{i}_c1.npy")
            c["blur15_c1"] = p("cv", f"blur{i}_c1.npy")
        cases.append(c)
    rs = []
    maps = [rng.random((hh, ww), dtype=np.float32) for (hh, ww) in ((14, 14), (32, 24), (1, 1), (3, 7), (24, 32))]
    maps.append(np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(30, 40))
    for i, m in enumerate(maps):
        H, W = m.shape
        np.save(p("cv", f"map{i}.npy"), m)
        for (w, h) in ((500, 375), (W * 16, H * 16), (W * 2, H * 2), (max(1, W // 2), max(1, H // 2)),
                       (W, H), (13, 9), (1, 1), (W + 1, H + 2), (max(1, W // 3), H * 3)):
            lin = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
            nn = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            np.save(p("cv", f"map{i}_{w}x{h}_lin.npy"), lin.reshape(h, w))
            np.save(p("cv", f"map{i}_{w}x{h}_nn.npy"), nn.reshape(h, w))
            rs.append(dict(map=p("cv", f"map{i}.npy"), w=w, h=h, lin=p("cv", f"map{i}_{w}x{h}_lin.npy"),
                           nn=p("cv", f"map{i}_{w}x{h}_nn.npy")))
    with open(p("manifest_cv.json"), "w") as f:
        json.dump({"cases": cases, "resize": rs}, f, indent=0)


for s in SECTIONS:
    {"decode": gen_decode, "resize": gen_resize, "clip": gen_clip, "cv": gen_cv}[s]()
print("ok")
