#!/usr/bin/python3
"""Reference data for tests/test_cam.c, made with PyTorch autograd, NumPy and OpenCV.

  cam_ref_torch.py grad OUTDIR   random last block + ln_post + proj, random trunk output x_in,
                                 random attentions and text rows; writes the inputs and what
                                 the reference pipeline (clipcam.py / cam.py / utils.py) computes:
                                 probs, full gradients d p[i] / d a (autograd), Grad-CAM grid,
                                 box masks and refined masks (cv2.resize to the original size).
  cam_ref_torch.py boxes OUTDIR  random score maps and the boxes of utils.scoremap2bbox
                                 (cv2.threshold + cv2.findContours RETR_TREE + boundingRect).

Run with Debian's /usr/bin/python3 (torch 1.13, numpy, cv2). The reference code is re-stated here
from car_method.md §2 (no upstream code is imported).
"""
import json
import math
import os
import sys

import numpy as np


def scoremap2bbox(scoremap, threshold):
    import cv2
    height, width = scoremap.shape
    img = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    while True:
        _, thr = cv2.threshold(src=img, thresh=int(threshold * np.max(img)), maxval=255,
                               type=cv2.THRESH_BINARY)
        if thr.max() > 0 or threshold <= 0:
            break
        threshold -= 0.1
    contours = cv2.findContours(image=thr, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return [[0, 0, 0, 0]]
    boxes = []
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return boxes


def scale_cam(img, target=None):
    import cv2
    img = img - np.min(img)
    img = img / (1e-15 + np.max(img))
    if target is not None:
        img = cv2.resize(img, target)
    return np.float32(img)


def grad_case(out):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    C, heads, E, gh, gw, H, W = 128, 2, 24, 5, 7, 70, 101
    n, nb, n_attn = 3, 4, 9
    L = 1 + gh * gw

    def r(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    wts = {
        "ln1_w": 1 + r(C, s=0.1), "ln1_b": r(C, s=0.1),
        "in_w": r(3 * C, C, s=C ** -0.5), "in_b": r(3 * C, s=0.1),
        "out_w": r(C, C, s=C ** -0.5), "out_b": r(C, s=0.1),
        "ln2_w": 1 + r(C, s=0.1), "ln2_b": r(C, s=0.1),
        "fc_w": r(4 * C, C, s=C ** -0.5), "fc_b": r(4 * C, s=0.1),
        "proj_w": r(C, 4 * C, s=(4 * C) ** -0.5), "proj_b": r(C, s=0.1),
        "lnp_w": 1 + r(C, s=0.1), "lnp_b": r(C, s=0.1),
        "vproj": r(C, E, s=C ** -0.5),
    }
    x_in = r(L, C)
    att = np.exp(r(n_attn, L, L, s=2.0))
    att = (att / att.sum(-1, keepdims=True)).astype(np.float32)
    fg = r(n, E)
    bg = r(nb, E)
    scale = np.float32(14.285714)
    lam = 0.4
    for k, v in wts.items():
        np.save(os.path.join(out, k + ".npy"), v)
    np.save(os.path.join(out, "x_in.npy"), x_in)
    np.save(os.path.join(out, "attn.npy"), att)
    np.save(os.path.join(out, "fg.npy"), fg)
    np.save(os.path.join(out, "bg.npy"), bg)

    t = {k: torch.from_numpy(v) for k, v in wts.items()}
    xin = torch.from_numpy(x_in)[:, None, :]  # (L, 1, C)

    def forward(a, text):
        attn_out, attn_w = F.multi_head_attention_forward(
            a, a, a, C, heads, t["in_w"], t["in_b"], None, None, False, 0.0,
            t["out_w"], t["out_b"], training=False, need_weights=True)
        x = xin + attn_out
        h = F.layer_norm(x, (C,), t["ln2_w"], t["ln2_b"], 1e-5)
        h = F.linear(h, t["fc_w"], t["fc_b"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, t["proj_w"], t["proj_b"])
        x = x.permute(1, 0, 2)
        x = F.layer_norm(x, (C,), t["lnp_w"], t["lnp_b"], 1e-5)
        x = torch.mean(x[:, 1:, :], dim=1) @ t["vproj"]
        x = x / x.norm(dim=1, keepdim=True)
        text = text / text.norm(dim=1, keepdim=True)
        return F.softmax((scale * x @ text.t()).float(), dim=-1), attn_w

    a0 = F.layer_norm(xin, (C,), t["ln1_w"], t["ln1_b"], 1e-5).detach()
    T_all = torch.from_numpy(np.concatenate([fg, bg], 0))
    T_fg = torch.from_numpy(fg)
    G = np.zeros((n, L, C), np.float32)
    grids = np.zeros((n, gh, gw), np.float32)
    masks = np.zeros((n, H, W), np.float32)
    bmasks = np.zeros((n, gh, gw), np.float32)
    probs = None
    attn_last = None
    for i in range(n):
        def gradcam(text):
            a = a0.clone().requires_grad_(True)
            p, aw = forward(a, text)
            p[:, i].sum().backward()
            g = a.grad[1:, 0, :].reshape(gh, gw, C).permute(2, 0, 1).numpy()[None]
            act = a0[1:, 0, :].reshape(gh, gw, C).permute(2, 0, 1).numpy()[None]
            w = np.mean(g, axis=(2, 3))
            cam = (w[:, :, None, None] * act).sum(axis=1)
            cam = np.maximum(cam, 0).astype(np.float32)
            cam = scale_cam(scale_cam(cam[0]))
            return p, aw, a.grad[:, 0, :].numpy(), cam
        p, aw, g, cam = gradcam(T_all)
        if i == 0:
            probs = p[0].detach().numpy()
            attn_last = aw.detach()
        G[i] = g
        if cam.max() == 0:
            _, _, _, cam = gradcam(T_fg)
        grids[i] = cam
        aff = torch.stack([torch.from_numpy(att[b])[None, 1:, 1:] for b in range(n_attn)] +
                          [attn_last[:, 1:, 1:]], dim=0)[-8:]
        aff = torch.mean(aff, dim=0)[0].float()
        box_mask = torch.zeros((gh, gw))
        for x0, y0, x1, y1 in scoremap2bbox(cam, lam):
            box_mask[y0:y1, x0:x1] = 1
        bmasks[i] = box_mask.numpy()
        box_mask = box_mask.view(1, gh * gw)
        tm = aff / torch.sum(aff, dim=0, keepdim=True)
        tm = tm / torch.sum(tm, dim=1, keepdim=True)
        for _ in range(2):
            tm = tm / torch.sum(tm, dim=0, keepdim=True)
            tm = tm / torch.sum(tm, dim=1, keepdim=True)
        tm = (tm + tm.transpose(1, 0)) / 2
        tm = torch.matmul(tm, tm)
        tm = tm * box_mask
        refined = torch.matmul(tm, torch.FloatTensor(cam).view(-1, 1)).reshape(gh, gw)
        masks[i] = scale_cam(refined.numpy().astype(np.float32), (W, H))
    np.save(os.path.join(out, "probs.npy"), probs)
    np.save(os.path.join(out, "G.npy"), G)
    np.save(os.path.join(out, "grid.npy"), grids)
    np.save(os.path.join(out, "boxmask.npy"), bmasks)
    np.save(os.path.join(out, "masks.npy"), masks)
    np.save(os.path.join(out, "attn_last.npy"), attn_last.numpy()[0])
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"C": C, "heads": heads, "E": E, "gh": gh, "gw": gw, "H": H, "W": W, "n": n,
                   "nb": nb, "n_attn": n_attn, "scale": float(scale), "lambda": lam}, f)


def boxes_case(out):
    rng = np.random.default_rng(11)
    maps, meta = [], []
    off = 0
    for k in range(400):
        gh, gw = int(rng.integers(1, 17)), int(rng.integers(1, 17))
        kind = k % 4
        if kind == 0:    # smooth blobs
            m = rng.random((gh, gw)).astype(np.float32)
        elif kind == 1:  # rings and holes: a coarse pattern upsampled
            base = (rng.random(((gh + 2) // 3, (gw + 2) // 3)) > 0.5).astype(np.float32)
            m = np.kron(base, np.ones((3, 3), np.float32))[:gh, :gw] * rng.random((gh, gw)).astype(np.float32)
            m[gh // 2, gw // 2] = 0
        elif kind == 2:  # sparse peaks
            m = (rng.random((gh, gw)) ** 6).astype(np.float32)
        else:            # a frame with a hole (hole contours)
            m = np.zeros((gh, gw), np.float32)
            m[:, :] = 0.9
            if gh > 2 and gw > 2:
                m[1:-1, 1:-1] = 0.1
                m[gh // 2, gw // 2] = 1.0
        m = m.astype(np.float32)
        lam = float(rng.choice([0.0, 0.3, 0.4, 0.5, 0.7, 0.95]))
        boxes = scoremap2bbox(m, lam)
        maps.append(m.ravel())
        meta.append({"gh": gh, "gw": gw, "lambda": lam, "offset": off, "boxes": boxes})
        off += gh * gw
    np.save(os.path.join(out, "maps.npy"), np.concatenate(maps).astype(np.float32))
    with open(os.path.join(out, "boxes.json"), "w") as f:
        json.dump({"cases": meta}, f)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("grad", "boxes"):
        sys.exit("usage: cam_ref_torch.py grad|boxes OUTDIR")
    os.makedirs(sys.argv[2], exist_ok=True)
    (grad_case if sys.argv[1] == "grad" else boxes_case)(sys.argv[2])
