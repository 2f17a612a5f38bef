import json
import os

import numpy as np
import pytest

import carseg
from conftest import shared


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture(scope="module")
def expected():
    return json.load(open(shared("fixtures/clip_sg/expected.json")))


@pytest.fixture(scope="module")
def images(expected):
    rel = {"chelsea.png": "data/photos/chelsea.png",
           "2011_000025.jpg": "data/voc_mini/VOCdevkit/VOC2012/JPEGImages/2011_000025.jpg",
           "camera.png": "data/photos/camera.png"}
    return [shared(rel[n]) for n in expected["images"]]


@pytest.mark.parametrize("fname", ["model_f16.safetensors", "model_hf.safetensors",
                                   "model_jit.pt", "model_state.pt"])
def test_features_equal_upstream(fname, expected, images, vocab):
    m = carseg.load(shared("fixtures/clip_sg/" + fname), vocab=vocab)
    assert m.input_resolution == expected["input_resolution"] == 224
    assert abs(m.logit_scale - expected["logit_scale_exp"]) < 1e-5
    ft = m.encode_text(expected["texts"])
    assert ft.dtype == np.float32 and ft.shape == (len(expected["texts"]), m.embed_dim)
    assert rel_err(ft, expected["text_features"]) < 1e-5
    tok = np.zeros((len(expected["tokens"]), 77), np.int64)
    for i, t in enumerate(expected["tokens"]):
        tok[i, :len(t)] = t
    assert np.array_equal(carseg.tokenize(expected["texts"], vocab=vocab), tok)
    assert np.array_equal(m.encode_text(tok), ft)          # token arrays: the same bits
    fi = m.encode_image(images)
    assert fi.dtype == np.float32 and fi.shape == (3, m.embed_dim)
    assert rel_err(fi, expected["image_features"]) < 1e-5
    lpi, lpt = m(images, expected["texts"])
    assert rel_err(lpi, expected["logits_per_image"]) < 1e-5
    assert np.array_equal(lpt, lpi.T)


def test_preprocess_and_image_kinds(expected, images, sg):
    PIL = pytest.importorskip("PIL.Image")
    m = carseg.load(sg)
    for path, s in zip(images, expected["preprocessed_pixel_sha"]):
        x = m.preprocess(path)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32
        assert abs(float(x.sum(dtype=np.float64)) - s) < 1e-3 * max(1, abs(s))
    path = images[0]
    arr = np.asarray(PIL.open(path).convert("RGB"))
    ref = m.encode_image(path)
    assert np.array_equal(m.encode_image(PIL.open(path)), ref)
    assert np.array_equal(m.encode_image(arr), ref)
    ro = arr.copy()
    ro.setflags(write=False)
    assert np.array_equal(m.encode_image(ro), ref)
    # a non-contiguous view: every other column of a doubled image is the image itself
    wide = np.repeat(arr, 2, axis=1)[:, ::2]
    assert not wide.flags.c_contiguous
    assert np.array_equal(m.encode_image(wide), ref)
    assert np.array_equal(m.encode_image(open(path, "rb").read()), ref)   # encoded bytes
    x = m.preprocess(path)
    assert np.array_equal(m.encode_image(x), ref)
    assert np.array_equal(m.encode_image(x[None].astype(np.float64)), ref)
    # one image's features do not depend on the others of the call
    both = m.encode_image([images[1], path])
    assert np.array_equal(both[1], ref[0])
    # another size in whole patches (CaR's generator): the positional embedding resized; two equal
    # images in one call give equal rows, and the features are not the 224 x 224 crop's
    P = m.config["patch"]
    big = np.concatenate([x, x], axis=2)[:, :, : 224 + 2 * P]   # (3, 224, 224 + 2P)
    f2 = m.encode_image(np.stack([big, big]))
    assert f2.shape == (2, ref.shape[1]) and np.isfinite(f2).all()
    assert np.array_equal(f2[0], f2[1]) and not np.array_equal(f2[0], ref[0])


def test_clip_errors(sg, tmp_path):
    m = carseg.load(sg)
    with pytest.raises(TypeError, match="uint8"):
        m.encode_image(np.zeros((8, 8, 3), np.int16))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        m.encode_image(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"multiples of the patch size"):
        m.encode_image(np.zeros((3, 30, 224), np.float32))
    x = np.zeros((1, 3, 224, 224), np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(carseg.InvalidArgument, match="non-finite"):
        m.encode_image(x)
    tok = np.zeros((1, 77), np.int64)
    tok[0, :2] = [49406, 60000]
    with pytest.raises(carseg.InvalidArgument, match="60000"):
        m.encode_text(tok)
    with pytest.raises(ValueError, match=r"\(n, 77\)"):
        m.encode_text(np.zeros((1, 5), np.int64))
    with pytest.raises(TypeError):
        m.encode_text(np.zeros((1, 77), np.float32))
    with pytest.raises(carseg.FormatError):
        m.encode_image(b"not an image at all")
    with pytest.raises(OSError) as e:
        carseg.load("/nonexistent/model.safetensors")
    assert "/nonexistent/model.safetensors" in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}       " + b"\0" * 64)
    with pytest.raises(carseg.Error) as e:
        carseg.load(str(bad))
    assert "bad.safetensors" in str(e.value)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(open(sg, "rb").read()[:5000])
    with pytest.raises(carseg.Error):
        carseg.load(str(trunc))
    with pytest.raises(carseg.InvalidArgument):
        carseg.load(sg, precision="fp8")
