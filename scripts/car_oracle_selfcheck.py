#!/usr/bin/python3
"""car_oracle_selfcheck.py — validates scripts/car_oracle.py against the upstream CaR fixtures in
/work/shared/fixtures/car/<case>/ (made by the real google-research code). Prints PASS/FAIL per
quantity and case; exit status 1 if anything FAILs.

  car_oracle_selfcheck.py [--shared /work/shared] [--carseg build/carseg] [--cases a,b] [--keep DIR]

Without a carseg binary that has the `crf` subcommand, the CRF-dependent checks (crf marginals,
label map) are reported as SKIP: the oracle's CRF step is the C implementation, not independent.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from car_oracle import TEMPLATES  # noqa: E402
CASES = ["coffee300_voc", "chelsea_voc", "astronaut_cocolike"]
results = []


def report(case, what, ok, detail=""):
    tag = "PASS" if ok is True else ("SKIP" if ok is None else "FAIL")
    results.append(tag)
    print("%-4s %-20s %-34s %s" % (tag, case, what, detail), flush=True)


def close(case, what, got, ref, atol, rtol=0.0):
    got = np.asarray(got, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    if got.shape != ref.shape:
        report(case, what, False, "shape %s vs %s" % (got.shape, ref.shape))
        return
    err = np.abs(got - ref)
    bad = err > atol + rtol * np.abs(ref)
    report(case, what, not bad.any(), "max|d|=%.3g (tol %.0e, n=%d)" % (err.max() if err.size else 0, atol,
                                                                         err.size))


def has_crf(binary):
    if not binary or not os.access(binary, os.X_OK):
        return False
    return subprocess.run([binary, "crf", "--help"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


_models = {}


def isolated(case, r_, fx, d, st, meta, models, args, shared, eta, lam, pngs):
    """Stages fed with the upstream fixture's own inputs: CAA from the fixture's Grad-CAM grid,
    prompts from the fixture's masks, classifier on those prompted images."""
    import cv2
    import torch
    from PIL import Image
    sys.path.insert(0, HERE)
    import car_oracle as co
    import clip_tokenizer_oracle as ct
    key = (args["gen"], args["cls"])
    if key not in _models:
        tok = ct.Oracle(os.path.join(shared, "clip/bpe_simple_vocab_16e6.txt.gz"))
        gm = co.load_clip(models[args["gen"]])
        cm = gm if args["gen"] == args["cls"] else co.load_clip(models[args["cls"]])
        _models[key] = (co.Generator(gm, co.Text(gm, tok)), co.Classifier(cm, co.Text(cm, tok)))
    gen, cls = _models[key]
    pil = Image.open(os.path.join(fx, "input.png")).convert("RGB")
    img = np.asarray(pil)
    gen.prepare(pil)
    tp = os.path.join(fx, "iter01/gen_trunk_out.npy")
    if r_ == "r1 " and os.path.exists(tp):
        close(case, "generator trunk output", gen.x_in.numpy(), np.load(tp), 1e-5)
    ap = os.path.join(fx, "iter01/gen_trunk_attn.npy")
    if r_ == "r1 " and os.path.exists(ap):
        close(case, "generator trunk attention", np.stack([t.numpy() for t in gen.trunk_attn]),
              np.load(ap), 1e-6)
    a = gen.a0.clone().requires_grad_(True)
    bg = torch.from_numpy(np.load(os.path.join(fx, "gen_text_emb_bg.npy")))
    _, w = gen.head(a, bg)
    tm = gen.transition(w.detach())
    grid = np.load(os.path.join(d, "gradcam_grid.npy"))
    ref = np.load(os.path.join(d, "masks.npy"))
    H, W = ref.shape[1:]
    got = np.zeros_like(ref)
    boxes_ok = True
    for i in range(grid.shape[0]):
        boxes = co.scoremap2bbox(grid[i], lam)
        boxes_ok &= [list(b) for b in boxes] == st["boxes"][i]
        bm = torch.zeros(grid.shape[1:])
        for x0, y0, x1, y1 in boxes:
            bm[y0:y1, x0:x1] = 1
        r = torch.matmul(tm * bm.view(1, -1), torch.from_numpy(grid[i]).view(-1, 1)).reshape(grid.shape[1:])
        got[i] = co.scale_cam(r.numpy().astype(np.float32), (W, H))
    report(case, r_ + "boxes from fixture grid", boxes_ok)
    # exact (0) where the trunk output is bit-identical (coffee300: 248 tokens); with 1025 tokens
    # (astronaut) the trunk differs by a few ulps (summation order) and so does the affinity
    close(case, r_ + "masks from fixture grid (CAA)", got, ref, 1e-4)
    prompted = [co.visual_prompt(img, m, eta, meta["visual_prompt_type"])[0] for m in ref]
    same = sum(int(np.array_equal(cv2.cvtColor(prompted[int(f[9:11])], cv2.COLOR_RGB2BGR),
                                  cv2.imread(os.path.join(d, f)))) for f in pngs)
    report(case, r_ + "prompts from fixture masks", same == len(pngs), "%d/%d exact" % (same, len(pngs)))
    sem = json.load(open(os.path.join(d, "cls_text.json")))
    P, S, _ = cls.run(prompted, sem)
    close(case, r_ + "cls_S from fixture masks", S, np.load(os.path.join(d, "cls_S.npy")), 1e-5)
    close(case, r_ + "cls_P from fixture masks", P, np.load(os.path.join(d, "cls_P.npy")), 1e-5)


def check_case(case, shared, binary, keep):
    import cv2
    fx = os.path.join(shared, "fixtures", "car", case)
    meta = json.load(open(os.path.join(fx, "meta.json")))
    args = meta["args"]
    models = {"sg": os.path.join(shared, "fixtures/clip_sg/model_f16.safetensors"),
              "sc": os.path.join(shared, "fixtures/models/sc_f16.safetensors")}
    out = os.path.join(keep, case) if keep else tempfile.mkdtemp(prefix="oracle_" + case + "_")
    cmd = [sys.executable, os.path.join(HERE, "car_oracle.py"), os.path.join(fx, "input.png"),
           "--out", out, "--generator", models[args["gen"]], "--classifier", models[args["cls"]],
           "--vocab", os.path.join(shared, "clip/bpe_simple_vocab_16e6.txt.gz"),
           "--classes", "|".join(meta["queries"]),
           "--eta", repr(meta["mask_threshold_eta"]), "--theta", repr(meta["confidence_threshold_theta"]),
           "--lambda", repr(meta["clipes_threshold_lambda"]),
           "--prompts", ",".join(meta["visual_prompt_type"]), "--bg", "|".join(meta["bg_cls"]),
           "--fixture-extras", "--threads", "2"]
    eta, lam = meta["mask_threshold_eta"], meta["clipes_threshold_lambda"]
    if meta["semantic_templates"] != TEMPLATES:
        report(case, "templates are the 15 of voc.yaml", False)
    crf_ok = has_crf(binary)
    cmd += ["--crf", "carseg", "--carseg", binary] if crf_ok else ["--crf", "none"]
    r = subprocess.run(cmd)
    if r.returncode != 0:
        report(case, "oracle run", False, "exit %d" % r.returncode)
        return
    report(case, "oracle run", True, out)
    g = np.load(os.path.join(out, "gen_input.npy"))
    close(case, "gen_input", g, np.load(os.path.join(fx, "iter01/gen_input.npy")), 1e-6)
    n_iter = meta["n_iterations"]
    k = 1
    while os.path.exists(os.path.join(out, "round%d.json" % (k + 1))):
        k += 1
    report(case, "number of rounds", k == n_iter, "%d vs %d" % (k, n_iter))
    for it in range(1, min(k, n_iter) + 1):
        d = os.path.join(fx, "iter%02d" % it)
        st = json.load(open(os.path.join(d, "stage.json")))
        rd = json.load(open(os.path.join(out, "round%d.json" % it)))
        r_ = "r%d " % it
        report(case, r_ + "cam_text", rd["cam_text"] == st["cam_text"])
        # the fixture records kept_idx before the argmax fallback ([] when it fired)
        report(case, r_ + "survivors", [rd["clip_text"][i] for i in rd["kept_idx"]] == st["survivors"]
               and (rd["kept_idx"] == st["kept_idx"] or not st["kept_idx"]),
               "%s vs %s" % (rd["kept_idx"], st["kept_idx"]))
        close(case, r_ + "diag scores", rd["scores"], st["diag_scores"], 1e-5)
        if "boxes" in st:
            report(case, r_ + "boxes", [[list(b) for b in bb] for bb in rd["boxes"]] == st["boxes"])
        close(case, r_ + "gen_probs", np.load(os.path.join(out, "r%d_gen_probs.npy" % it)),
              np.load(os.path.join(d, "gen_probs.npy")), 1e-5)
        close(case, r_ + "gradcam grids", np.load(os.path.join(out, "r%d_gradcam_grid.npy" % it)),
              np.load(os.path.join(d, "gradcam_grid.npy")), 1e-4)
        cams = np.load(os.path.join(out, "round%d_cams.npy" % it))
        have_masks = os.path.exists(os.path.join(d, "masks.npy"))
        if have_masks:
            # end to end: the grids differ from upstream by 1-3 float32 ulps (autograd summation
            # order); the refined CAM's min-max amplifies that by up to ~1e3 where the refined map
            # is nearly flat, hence 5e-4 here and the exact isolated check below.
            close(case, r_ + "masks (end to end)", cams, np.load(os.path.join(d, "masks.npy")), 5e-4)
        else:
            report(case, r_ + "masks", None, "not in the fixture")
        pngs = sorted(f for f in os.listdir(d) if f.startswith("prompted_"))
        same, near = 0, True
        for f in pngs:
            a = cv2.imread(os.path.join(d, f))
            b = cv2.imread(os.path.join(out, "r%d_%s" % (it, f)))
            same += int(b is not None and a.shape == b.shape and np.array_equal(a, b))
            if b is not None and a.shape == b.shape:
                diff = np.any(a != b, axis=2)
                near &= bool(np.all(np.abs(cams[int(f[9:11])][diff] - eta) < 1e-3))
            else:
                near = False
        report(case, r_ + "prompted images (end to end)", near,
               "%d/%d identical; every differing pixel has |cam - eta| < 1e-3" % (same, len(pngs)))
        # end to end the classifier sees those few flipped pixels: 1e-4; isolated check below
        close(case, r_ + "cls_S (end to end)", np.load(os.path.join(out, "r%d_cls_S.npy" % it)),
              np.load(os.path.join(d, "cls_S.npy")), 1e-4)
        close(case, r_ + "cls_P (end to end)", np.load(os.path.join(out, "r%d_cls_P.npy" % it)),
              np.load(os.path.join(d, "cls_P.npy")), 1e-4)
        if have_masks:
            isolated(case, r_, fx, d, st, meta, models, args, shared, eta, lam, pngs)
    report(case, "crf_image_u8 (Q4, exact)", np.array_equal(np.load(os.path.join(out, "crf_image_u8.npy")),
                                                            np.load(os.path.join(fx, "crf_image_u8.npy"))))
    close(case, "crf_probs_in", np.load(os.path.join(out, "crf_probs_in.npy")),
          np.load(os.path.join(fx, "crf_probs_in.npy")), 1e-4)
    if not crf_ok:
        report(case, "crf marginals / label map", None, "no `carseg crf` binary (not independent anyway)")
        return
    # not an oracle check: the C CRF (permutohedral lattice) against pydensecrf's marginals
    close(case, "crf_q (C CRF, info)", np.load(os.path.join(out, "crf_q.npy")),
          np.load(os.path.join(fx, "crf_q.npy")), 2e-2)
    close(case, "final_scores", np.load(os.path.join(out, "final_scores.npy")),
          np.load(os.path.join(fx, "final_scores.npy")), 1e-5)
    from PIL import Image
    lab = np.asarray(Image.open(os.path.join(out, "labels.png"))).astype(np.int64)
    ref = np.load(os.path.join(fx, "label_map.npy")).astype(np.int64)
    eq = float(np.mean(lab == ref)) if lab.shape == ref.shape else 0.0
    report(case, "label map (>= 99.9%)", eq >= 0.999, "%.5f%% equal" % (100 * eq))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.environ.get("CARSEG_SHARED", "/work/shared"))
    ap.add_argument("--carseg", default=os.environ.get("CARSEG_BIN", os.path.join(HERE, "..", "build", "carseg")))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--keep")
    a = ap.parse_args()
    for c in a.cases.split(","):
        check_case(c, a.shared, a.carseg, a.keep)
    nf = results.count("FAIL")
    print("%d PASS, %d FAIL, %d SKIP" % (results.count("PASS"), nf, results.count("SKIP")))
    return 1 if nf else 0


if __name__ == "__main__":
    sys.exit(main())
