#!/usr/bin/python3
"""Baseline for bench/bench_cam.c: the reference's per-query CAM loop (clipcam.py) in PyTorch on
the CPU. The shapes are ViT-B/16 with random weights, on a 24x32 grid (a 500x375 image at ceil16
512x384). The trunk is left out: the timed part is what CLIPCAM.__call__ does per query after
encode_image. That is the last block forward with grad, the backward to ln_1, Grad-CAM,
scoremap2bbox, the affinity rebuilt from the attention maps (Sinkhorn + T@T) and the refinement
+ resize.

  bench_torch_cam.py [n_queries=20] [threads=2]
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def main():
    import cv2
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    torch.manual_seed(0)
    C, heads, E, gh, gw, nb = 768, 12, 512, 24, 32, 23
    L = 1 + gh * gw
    r = lambda *s: torch.randn(*s) * 0.02
    w = dict(in_w=r(3 * C, C), in_b=r(3 * C), out_w=r(C, C), out_b=r(C), fc_w=r(4 * C, C),
             fc_b=r(4 * C), pj_w=r(C, 4 * C), pj_b=r(C), proj=r(C, E))
    ln = lambda x: F.layer_norm(x, (C,))
    x_in = torch.randn(L, 1, C)
    attn_list = [torch.softmax(torch.randn(1, L, L), -1) for _ in range(11)]
    text = F.normalize(torch.randn(n + nb, E), dim=-1)

    def forward(a):
        o, aw = F.multi_head_attention_forward(a, a, a, C, heads, w["in_w"], w["in_b"], None, None,
                                               False, 0.0, w["out_w"], w["out_b"], training=False,
                                               need_weights=True)
        x = x_in + o
        h = F.linear(ln(x), w["fc_w"], w["fc_b"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), w["pj_w"], w["pj_b"])
        x = ln(x.permute(1, 0, 2))[:, 1:].mean(1) @ w["proj"]
        x = x / x.norm(dim=1, keepdim=True)
        return F.softmax(100 * x @ text.t(), dim=-1), aw

    t0 = time.perf_counter()
    for i in range(n):
        a = ln(x_in).detach().requires_grad_(True)
        p, aw = forward(a)
        p[:, i].sum().backward()
        g = a.grad[1:, 0].reshape(gh, gw, C).permute(2, 0, 1).numpy()
        act = a.detach()[1:, 0].reshape(gh, gw, C).permute(2, 0, 1).numpy()
        cam = np.maximum((g.mean((1, 2))[:, None, None] * act).sum(0), 0)
        cam = (cam - cam.min()) / (1e-15 + (cam - cam.min()).max())
        s8 = (cam * 255).astype(np.uint8)
        _, thr = cv2.threshold(s8, int(0.4 * s8.max()), 255, cv2.THRESH_BINARY)
        cnts = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        B = torch.zeros(gh, gw)
        for c in cnts:
            x, y, bw, bh = cv2.boundingRect(c)
            B[y:min(y + bh, gh - 1), x:min(x + bw, gw - 1)] = 1
        aff = torch.stack([m[:, 1:, 1:] for m in attn_list + [aw.detach()]])[-8:].mean(0)[0]
        t = aff / aff.sum(0, keepdim=True)
        t = t / t.sum(1, keepdim=True)
        for _ in range(2):
            t = t / t.sum(0, keepdim=True)
            t = t / t.sum(1, keepdim=True)
        t = (t + t.t()) / 2
        t = t @ t
        ref = ((t * B.view(1, -1)) @ torch.from_numpy(cam).float().view(-1, 1)).reshape(gh, gw)
        ref = ref.numpy()
        ref = (ref - ref.min()) / (1e-15 + (ref - ref.min()).max())
        cv2.resize(ref, (500, 375))
    dt = time.perf_counter() - t0
    print(f"torch reference loop, {n} queries + {nb} bg, {torch.get_num_threads()} threads: "
          f"{dt * 1000:.1f} ms ({dt * 1000 / n:.1f} ms/query)")


if __name__ == "__main__":
    main()
