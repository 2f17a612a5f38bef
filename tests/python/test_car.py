import json
import os
import threading
import time

import numpy as np
import pytest

import carseg
from conftest import run_cli, shared


@pytest.fixture(scope="module")
def model(sg, sc, vocab):
    return carseg.CaRModel(sg, sc, vocab)


@pytest.fixture(scope="module")
def coffee():
    return shared("fixtures/car/coffee300_voc/input.png")


@pytest.fixture(scope="module")
def astronaut():
    return shared("fixtures/car/astronaut_cocolike/input.png")


def strip(js):
    d = json.loads(js)
    d.pop("timings_ms", None)
    return d


def cli_segment(cli, tmp, image, *args):
    out = str(tmp)
    run_cli(cli, "segment", image, "--out", out, "--quiet", *args)
    stem = os.path.splitext(os.path.basename(image))[0]
    return (open(os.path.join(out, stem + ".png"), "rb").read(),
            open(os.path.join(out, stem + ".json")).read())


def models_args(sg, sc, vocab, gen_only=False):
    return ["--generator", sg, "--classifier", sg if gen_only else sc, "--vocab", vocab]


def test_preset_equals_fixture_and_cli(model, coffee, cli, sg, sc, vocab, tmp_path):
    seg = carseg.CaR(model=model)
    r = seg.segment(coffee, preset="voc", theta=0.06, image_name=coffee)
    assert r.classes == carseg.preset_classes("voc")
    assert r.labels.dtype == np.uint16 and r.labels.shape == (200, 300)
    assert r.masks.dtype == bool and r.masks.shape == (20, 200, 300)
    assert r.scores.dtype == np.float32 and r.scores.shape == (20,)
    ref = np.load(shared("fixtures/car/coffee300_voc/final_scores.npy"))
    assert np.max(np.abs(r.scores - ref)) < 1e-4
    lm = np.load(shared("fixtures/car/coffee300_voc/label_map.npy"))
    assert np.mean(r.labels == lm) >= 0.999
    # the recurrence: 20 -> 2 -> 1 -> 1 live queries over three rounds
    assert [len(x["live"]) for x in r.rounds] == [20, 2, 1]
    assert [len(x["survivors"]) for x in r.rounds] == [2, 1, 1]
    assert set(r.rounds[0]["dropped"]) | set(r.rounds[0]["survivors"]) == set(r.classes)
    assert set(r.timings) >= {"text", "cam", "classify", "crf", "total"}
    assert set(r.timings_cpu) >= {"text", "cam", "classify", "crf"} and "total" not in r.timings_cpu
    assert all(v >= 0 for v in r.timings_cpu.values())
    png, js = cli_segment(cli, tmp_path, coffee, "--preset", "voc", "--theta", "0.06",
                          *models_args(sg, sc, vocab))
    assert r.label_png() == png                  # byte for byte the CLI's label PNG
    assert strip(r.json) == strip(js)            # value for value the CLI's JSON
    out = tmp_path / "py.png"
    r.save(out)
    assert out.read_bytes() == png
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".carseg-")]


def test_classes_and_options_equal_cli(model, astronaut, cli, sg, vocab, tmp_path):
    m = carseg.CaRModel(sg, sg, vocab)
    seg = carseg.CaR(model=m, prompts=["blur", "gray"], eta=0.5, theta=0.03, lambda_=0.5)
    classes = ["person with clothes,people,human", "rocket", "flag", "helmet", "sky"]
    r = seg.segment(astronaut, classes, image_name=astronaut)
    png, js = cli_segment(cli, tmp_path, astronaut, "--classes", "|".join(classes),
                          "--prompts", "blur,gray", "--eta", "0.5", "--theta", "0.03",
                          "--lambda", "0.5", *models_args(sg, sg, vocab, True))
    assert r.label_png() == png and strip(r.json) == strip(js)
    ref = np.load(shared("fixtures/car/astronaut_cocolike/final_scores.npy"))
    assert np.max(np.abs(r.scores - ref)) < 1e-4
    # per-call options, the fixes, no CRF, bg words: each equal to the CLI
    kw = dict(fix=["q3", "q8"], crf=False, bg_words=["ground", "wall"])
    r2 = seg.segment(astronaut, "person|rocket", image_name=astronaut, **kw)
    png2, js2 = cli_segment(cli, tmp_path / "b", astronaut, "--classes", "person|rocket",
                            "--prompts", "blur,gray", "--eta", "0.5", "--theta", "0.03",
                            "--lambda", "0.5", "--fix", "q3,q8", "--no-crf", "--bg-words",
                            "ground,wall", *models_args(sg, sg, vocab, True))
    assert r2.label_png() == png2 and strip(r2.json) == strip(js2)


def test_prepared_image_reused(model, coffee):
    seg = carseg.CaR(model=model, theta=0.06)
    p = seg.prepare(coffee)
    a1 = seg.segment(p, ["cat", "dog", "cup"])
    b1 = seg.segment(p, ["table", "person", "bottle", "plant"])
    fresh = carseg.CaR(model=model, theta=0.06)
    a2 = fresh.segment(coffee, ["cat", "dog", "cup"])
    b2 = fresh.segment(coffee, ["table", "person", "bottle", "plant"])
    for x, y in ((a1, a2), (b1, b2)):
        assert np.array_equal(x.labels, y.labels) and np.array_equal(x.scores, y.scores)
        assert np.array_equal(x.masks, y.masks)


def test_keep_cams_and_refer(model, coffee, cli, sg, vocab, tmp_path):
    seg = carseg.CaR(model=model, theta=0.06)
    r = seg.segment(coffee, ["cat", "cup"], keep_cams=True)
    assert r.cams is not None and r.cams.shape == (2, 200, 300) and r.cams.dtype == np.float32
    assert seg.segment(coffee, ["cat", "cup"]).cams is None
    m = carseg.CaRModel(sg, sg, vocab)
    rs = carseg.CaR(model=m)
    rr = rs.refer(coffee, ["a cup of coffee", "the mug"], image_name=coffee)
    assert rr.refer and rr.masks.shape == (2, 200, 300) and rr.mask.dtype == bool
    png, js = cli_segment(cli, tmp_path, coffee, "--refer", "a cup of coffee", "--refer",
                          "the mug", *models_args(sg, sg, vocab, True))
    assert rr.label_png() == png and strip(rr.json) == strip(js)


def test_crf_equals_fixture():
    d = "fixtures/crf/voc8_3/"
    probs = np.load(shared(d + "probs.npy"))
    feat = np.load(shared(d + "features.npy"))
    labels, q = carseg.crf(probs, feat, marginals=True)
    ref = np.load(shared(d + "labels.npy"))
    assert labels.dtype == np.uint16 and labels.shape == ref.shape
    assert np.mean(labels == ref) >= 0.999
    qref = np.load(shared(d + "q.npy"))
    assert np.mean(np.abs(q - qref) > 1e-3) <= 0.001
    assert np.array_equal(carseg.crf(probs, feat), labels)
    with pytest.raises(ValueError, match="does not match"):
        carseg.crf(probs, feat[:-1])
    with pytest.raises(ValueError):
        carseg.crf(probs[0], feat)


def test_rle_known_answers():
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 1
    assert carseg.rle_encode(m) == "5220003"
    assert np.array_equal(carseg.rle_decode("5220003", 4, 5), m.astype(bool))
    assert np.array_equal(carseg.rle_decode({"size": [4, 5], "counts": "5220003"}, 0, 0), m != 0)
    with pytest.raises(carseg.FormatError):
        carseg.rle_decode("5220", 4, 5)


def test_errors(model, coffee, sg, vocab, tmp_path):
    seg = carseg.CaR(model=model)
    with pytest.raises(ValueError, match="empty class list"):
        seg.segment(coffee, [])
    with pytest.raises(ValueError, match="empty name"):
        seg.segment(coffee, ["cat", ""])
    with pytest.raises(ValueError, match="classes or a preset"):
        seg.segment(coffee)
    with pytest.raises(TypeError, match="uint8"):
        seg.segment(np.zeros((20, 20, 3), np.float32), ["cat"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        seg.segment(np.zeros((20, 20), np.uint8), ["cat"])
    with pytest.raises(TypeError, match="unknown option"):
        carseg.CaR(model=model, tehta=0.1)
    with pytest.raises(carseg.InvalidArgument, match="q99"):
        seg.segment(coffee, ["cat"], fix=["q99"])
    with pytest.raises(carseg.InvalidArgument, match="nope"):
        seg.segment(coffee, preset="nope")
    with pytest.raises(carseg.InvalidArgument):
        seg.segment(coffee, ["cat"], prompts="sparkles")
    with pytest.raises(carseg.InvalidArgument):
        seg.segment(coffee, ["cat"], theta=7)
    with pytest.raises(OSError, match="nope.png"):
        seg.segment(str(tmp_path / "nope.png"), ["cat"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(carseg.FormatError, match="bad.png"):
        seg.segment(str(bad), ["cat"])
    with pytest.raises(OSError, match="/nonexistent/g.safetensors"):
        carseg.CaR("/nonexistent/g.safetensors", sg, vocab)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(carseg.Error):
        carseg.CaR(str(garbage), sg, vocab)
    with pytest.raises(TypeError):
        carseg.CaR(model="not a model")


def test_two_threads_share_one_model(model, coffee, astronaut):
    classes = ["cat", "cup", "table", "person"]
    serial = [carseg.CaR(model=model, theta=0.06).segment(im, classes)
              for im in (coffee, astronaut)]
    out = [None, None]

    def work(i, im):
        out[i] = carseg.CaR(model=model, theta=0.06, threads=1).segment(im, classes)
    ts = [threading.Thread(target=work, args=(i, im)) for i, im in enumerate((coffee, astronaut))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for a, b in zip(out, serial):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.scores, b.scores)


def test_gil_released_during_compute(model, astronaut):
    """While one thread is inside carseg, Python code in another thread keeps running: the
    longest pause the main thread sees is far below the call's duration."""
    seg = carseg.CaR(model=model, threads=1)
    seg.prepare(astronaut)            # warm
    span = {}

    def work():
        t0 = time.perf_counter()
        seg.segment(astronaut, ["person", "rocket", "flag"])
        span["t"] = (t0, time.perf_counter())
    t = threading.Thread(target=work)
    stamps = []
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    t0, t1 = span["t"]
    inside = [s for s in stamps if t0 <= s <= t1]
    assert len(inside) > 100
    gaps = np.diff([t0] + inside + [t1])
    assert gaps.max() < 0.5 * (t1 - t0), (gaps.max(), t1 - t0)


def test_hostile_strings_and_numbers(model, coffee, sg, tmp_path):
    seg = carseg.CaR(model=model)
    with pytest.raises(ValueError, match="NUL"):
        seg.segment(coffee, ["ca\0t"])
    with pytest.raises(ValueError, match="NUL"):
        seg.refer(coffee, ["the\0cat"])
    with pytest.raises(ValueError, match="NUL"):
        seg.segment(coffee, ["cat"], bg_words=["wa\0ll"])
    with pytest.raises(ValueError, match="NUL"):
        carseg.tokenize("a\0b", vocab=shared("clip/bpe_simple_vocab_16e6.txt.gz"))
    with pytest.raises(UnicodeEncodeError):
        seg.segment(coffee, ["a\ud800b"])
    for kw in (dict(threads=10**12), dict(crf_params={"iters": 2**40}), dict(fix=1 << 40),
               dict(threads=-1)):
        with pytest.raises(ValueError, match="not in"):
            seg.segment(coffee, ["cat"], **kw)
    with pytest.raises(TypeError):
        seg.segment(coffee, ["cat"], threads=1.5)
    m = carseg.load(sg)
    assert m.encode_text([]).shape == (0, m.embed_dim)
    r = seg.segment(coffee, ["cat"], theta=0.06)
    with pytest.raises(FileNotFoundError, match="nowhere/x.png"):
        r.save(tmp_path / "nowhere" / "x.png")
    with pytest.raises(ValueError, match="sam=MODEL"):
        carseg.CaR(model=model, sam_points=8)


def test_prepared_shared_between_segmenters(model, coffee):
    a, b = carseg.CaR(model=model, theta=0.06), carseg.CaR(model=model, theta=0.06)
    p = a.prepare(coffee)
    ref = carseg.CaR(model=model, theta=0.06).segment(coffee, ["cat", "cup"])
    out = []

    def work(s):
        out.append(s.segment(p, ["cat", "cup"]))
    ts = [threading.Thread(target=work, args=(s,)) for s in (a, b, a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(out) == 4
    for r in out:
        assert np.array_equal(r.labels, ref.labels) and np.array_equal(r.scores, ref.scores)


def test_car_sam_equals_cli(model, coffee, cli, sg, sc, vocab, tmp_path):
    samp = shared("fixtures/sam/samt.safetensors")
    kw = dict(sam_points=8, sam_pred_iou=0, sam_stability=0, sam_iom=0, sam_iou=0, theta=0)
    seg = carseg.CaR(model=model, sam=samp)
    r = seg.segment(coffee, ["cup", "person", "table"], image_name=coffee, **kw)
    png, js = cli_segment(cli, tmp_path, coffee, "--classes", "cup,person,table", "--theta", "0",
                          "--sam", samp, "--sam-points", "8", "--sam-pred-iou", "0",
                          "--sam-stability", "0", "--sam-iom", "0", "--sam-iou", "0",
                          *models_args(sg, sc, vocab))
    assert r.label_png() == png and strip(r.json) == strip(js)
    plain = carseg.CaR(model=model).segment(coffee, ["cup", "person", "table"], theta=0)
    assert not np.array_equal(plain.labels, r.labels)      # the refinement did something
    with pytest.raises(OSError, match="nope.pth"):
        carseg.CaR(model=model, sam=str(tmp_path / "nope.pth"))
