#!/usr/bin/python3
"""Test fixtures for the eval module (run by tests/test_eval.c at test time into a temp dir).

  eval_fixtures.py semantic OUT   random GT / prediction label PNGs in the VOC layout, plus
                                  expected.json: the numbers of the reference's
                                  evaluate.semantic_iou (re-implemented below with numpy,
                                  same formulas) for ignore_background False and True.
  eval_fixtures.py refer OUT      a REFER-style dataset: refcoco/refs(unc).p as pickle
                                  protocols 0, 2 and 4 (refs0.p, refs(unc).p, refs4.p),
                                  refcoco/instances.json, and expected.json.
  eval_fixtures.py bench OUT       speed data for the evaluation loop's own overhead: OUT/voc
                                  (200 label maps 500x375, 21 classes) and OUT/ade847 (100 TIFFs
                                  683x512, 20 of 847 classes each), with predictions in */pred.
Only numpy and PIL from Debian's python3 are needed.
"""
import json
import os
import pickle
import sys

import numpy as np
from PIL import Image


def fast_hist(lt, lp, n):
    # evaluate._fast_hist: GT outside [0, n) ignored; bincount of n*gt + pred
    m = (lt >= 0) & (lt < n)
    return np.bincount(n * lt[m].astype(int) + lp[m], minlength=n ** 2).reshape(n, n)


def semantic_iou(gts, preds, n, ignore_background):
    # evaluate.semantic_iou, same formulas
    hist = np.zeros((n, n))
    for lt, lp in zip(gts, preds):
        hist += fast_hist(lt.flatten(), lp.flatten(), n)
    if ignore_background:
        hist = hist[1:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
    valid = hist.sum(axis=1) > 0
    mean_iu = 0.0 if valid.sum() == 0 else float(np.nanmean(iu[valid]))
    freq = hist.sum(axis=1) / hist.sum()
    fw = (freq[freq > 0] * iu[freq > 0]).sum()
    first = 1 if ignore_background else 0
    return {"miou": 100 * mean_iu, "pixel_acc": 100 * float(acc), "mean_acc": 100 * float(acc_cls),
            "fwiou": 100 * float(fw),
            "iou": {str(c + first): (None if np.isnan(v) else 100 * float(v)) for c, v in enumerate(iu)}}


def semantic(out):
    rng = np.random.RandomState(0)
    base = os.path.join(out, "VOCdevkit", "VOC2012")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    os.makedirs(os.path.join(out, "pred"), exist_ok=True)
    ids, gts, preds = [], [], []
    n = 21
    for k in range(12):
        h, w = rng.randint(20, 60), rng.randint(20, 60)
        # blocky GT with a few classes (some classes never appear), 255 borders
        cls = rng.choice([0, 1, 3, 7, 15, 20], size=4)
        gt = np.zeros((h, w), np.uint8)
        for j, c in enumerate(cls):
            gt[:, j * w // 4:(j + 1) * w // 4] = c
        gt[rng.rand(h, w) < 0.05] = 255
        pred = gt.copy()
        pred[pred == 255] = 0
        noise = rng.rand(h, w) < 0.3
        pred[noise] = rng.choice([0, 1, 2, 3, 7, 15, 20], size=noise.sum())
        i = "img_%03d" % k
        ids.append(i)
        gts.append(gt.astype(np.int64))
        preds.append(pred.astype(np.int64))
        pal = Image.fromarray(gt, mode="P")
        pal.putpalette([v for c in range(256) for v in (c, 255 - c, (7 * c) % 256)])
        pal.save(os.path.join(base, "SegmentationClass", i + ".png"))
        Image.fromarray(pred, mode="L").save(os.path.join(out, "pred", i + ".png"))
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(os.path.join(base, "JPEGImages", i + ".jpg"))
    with open(os.path.join(base, "ImageSets/Segmentation/val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    exp = {"voc": semantic_iou(gts, preds, n, False), "voc20": semantic_iou(gts, preds, n, True),
           "limit5": semantic_iou(gts[:5], preds[:5], n, False)}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(exp, f, indent=1)


def refer(out):
    d = os.path.join(out, "refcoco")
    os.makedirs(d, exist_ok=True)
    os.makedirs(os.path.join(out, "images/mscoco/images/train2014"), exist_ok=True)
    images = [{"id": 7, "width": 10, "height": 8, "file_name": "COCO_train2014_000000000007.jpg"},
              {"id": 9, "width": 6, "height": 5, "file_name": "COCO_train2014_000000000009.jpg"}]
    anns = [
        # rectangle x 1..4, y 1..3 -> 3x2 block (columns 1-3, rows 1-2)
        {"id": 100, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},
        # two overlapping rectangles: the overlap counts 2 and is dropped (getMask's == 1)
        {"id": 101, "image_id": 7, "category_id": 1,
         "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]]},
        {"id": 102, "image_id": 9, "category_id": 2, "segmentation": [[0, 0, 6, 0, 6, 5, 0, 5]]},
    ]
    refs = [
        {"ref_id": 5, "ann_id": 100, "image_id": 7, "category_id": 1, "split": "val",
         "sent_ids": [50, 51],
         "sentences": [{"sent_id": 50, "raw": 'The "Left" Box/Thing', "sent": "the left box thing",
                        "tokens": ["the", "left"]},
                       {"sent_id": 51, "raw": "small box", "sent": "small box", "tokens": ["small"]}]},
        {"ref_id": 6, "ann_id": 101, "image_id": 7, "category_id": 1, "split": "testA",
         "sent_ids": [60], "sentences": [{"sent_id": 60, "raw": "two boxes", "sent": "two boxes",
                                          "tokens": ["two"]}]},
        {"ref_id": 8, "ann_id": 102, "image_id": 9, "category_id": 2, "split": "val",
         "sent_ids": [80], "sentences": [{"sent_id": 80, "raw": "everything", "sent": "everything",
                                          "tokens": ["everything"]}]},
    ]
    r = np.random.RandomState(0)
    for im in images:   # small random photos, so that the method itself can run on the split
        Image.fromarray(r.randint(0, 255, (im["height"], im["width"], 3)).astype(np.uint8)).save(
            os.path.join(out, "images/mscoco/images/train2014", im["file_name"]))
    with open(os.path.join(d, "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}, f)
    for proto, name in ((0, "refs0.p"), (2, "refs(unc).p"), (4, "refs4.p")):
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(refs, f, protocol=proto)
    m5 = np.zeros((8, 10), np.uint8); m5[1:3, 1:4] = 1
    m6 = np.zeros((8, 10), np.uint8); m6[0:4, 0:4] += 1; m6[2:6, 2:6] += 1; m6 = (m6 == 1).astype(np.uint8)
    m8 = np.ones((5, 6), np.uint8)
    exp = {"val": {"5": m5.tolist(), "8": m8.tolist()}, "testA": {"6": m6.tolist()}}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(exp, f)
    # predictions for the val split: ref 5 exact, ref 8 half
    os.makedirs(os.path.join(out, "pred"), exist_ok=True)
    Image.fromarray(m5 * 255).save(os.path.join(out, "pred", "5.png"))
    p8 = np.zeros((5, 6), np.uint8); p8[:, :3] = 1
    Image.fromarray(p8).save(os.path.join(out, "pred", "8.png"))


def bench(out):
    rng = np.random.RandomState(1)
    base = os.path.join(out, "voc/VOCdevkit/VOC2012")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    os.makedirs(os.path.join(out, "voc/pred"), exist_ok=True)
    ids = []
    for k in range(200):
        h, w = 375, 500
        gt = np.repeat(rng.randint(0, 21, size=(h // 25 + 1, 1)), 25, 0)[:h].repeat(w, 1).astype(np.uint8)
        pr = gt.copy()
        m = rng.rand(h, w) < 0.2
        pr[m] = rng.randint(0, 21, size=m.sum())
        i = "im%04d" % k
        ids.append(i)
        Image.fromarray(gt, mode="L").save(os.path.join(base, "SegmentationClass", i + ".png"))
        Image.fromarray(pr, mode="L").save(os.path.join(out, "voc/pred", i + ".png"))
        open(os.path.join(base, "JPEGImages", i + ".jpg"), "wb").close()
    with open(os.path.join(base, "ImageSets/Segmentation/val.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    a = os.path.join(out, "ade847")
    for d in ("images_detectron2/validation", "annotations_detectron2/validation", "pred"):
        os.makedirs(os.path.join(a, d), exist_ok=True)
    for k in range(100):
        h, w = 512, 683
        cl = rng.choice(847, 20, replace=False)
        blocks = cl[rng.randint(0, 20, size=(h // 64 + 1, w // 64 + 1))]
        gt = blocks.repeat(64, 0).repeat(64, 1)[:h, :w].astype(np.uint16)
        pb = blocks + 1
        wrong = rng.rand(*blocks.shape) < 0.3
        pb[wrong] = rng.choice(cl, wrong.sum()) + 1
        pr = pb.repeat(64, 0).repeat(64, 1)[:h, :w].astype(np.uint16)
        pr[rng.rand(h, w) < 0.05] = 0
        i = "ADE_%04d" % k
        Image.fromarray(gt).save(os.path.join(a, "annotations_detectron2/validation", i + ".tif"))
        Image.fromarray(pr).save(os.path.join(a, "pred", i + ".png"))
        open(os.path.join(a, "images_detectron2/validation", i + ".jpg"), "wb").close()


if __name__ == "__main__":
    {"semantic": semantic, "refer": refer, "bench": bench}[sys.argv[1]](sys.argv[2])
