#!/usr/bin/python3
"""gen_clip_fixtures.py — reference cases for the C CLIP engine (tests/test_clip.c).

Builds a random-weight CLIP with scripts/clip_ref.py (a faithful copy of OpenAI's clip/model.py,
weights rounded to fp16 like the released checkpoints), saves it as safetensors (F16, OpenAI names)
and writes, into OUTDIR:
  model_f16.safetensors
  manifest.json          the cases: kind, inputs, expected outputs, sizes, n_blocks
  *.npy                  inputs and expected outputs (float32 / int32)
Cases: text features of random prompts (EOT at varied positions), image features at the native
grid (OpenAI encode_image), at non-native and non-square grids and with L-1 blocks (CaR's wrapper:
resized positional embedding rounded to fp16), and the CaR trunk (tokens + head-averaged attention
after L-1 blocks).

  /usr/bin/python3 scripts/gen_clip_fixtures.py tests/data/clip            # tiny (committed)
  /usr/bin/python3 scripts/gen_clip_fixtures.py /tmp/b16 --shape ViT-B/16  # full size (~300 MB)
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_ref  # noqa: E402

TINY = (32, 64, 3, 64, 16, 16, 500, 64, 1, 2)   # embed, res, v_layers, v_width, patch, ctx, vocab, t_width, t_heads, t_layers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="tiny", help="tiny, ViT-B/16 or ViT-L/14")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shape = TINY if a.shape == "tiny" else clip_ref.SHAPES[a.shape]
    e, res, vl, vw, p, ctx, voc, tw, th, tl = shape
    os.makedirs(a.out, exist_ok=True)
    m = clip_ref.random_clip(shape, a.seed)
    clip_ref.save_safetensors(os.path.join(a.out, "model_f16.safetensors"), m.state_dict(), "F16")
    rng = np.random.default_rng(a.seed)
    cases = []

    def save(name, arr):
        np.save(os.path.join(a.out, name), np.ascontiguousarray(arr))
        return name

    # text: SOT, random ids, EOT (the largest id), zero padding; one prompt runs to the full context
    n = 7
    tok = np.zeros((n, ctx), np.int32)
    lens = [3, 5, 2, ctx, 9, 4, 12]
    for i, L in enumerate(lens):
        L = min(L, ctx)
        tok[i, 0] = voc - 2
        tok[i, 1:L - 1] = rng.integers(1, voc - 2, L - 2)
        tok[i, L - 1] = voc - 1
    with torch.no_grad():
        tf = m.encode_text(torch.from_numpy(tok).long()).numpy()
    cases.append({"kind": "text", "tokens": save("tokens.npy", tok), "expected": save("text_features.npy", tf)})

    # images: native grid (OpenAI path), and non-native / non-square (CaR path), all and L-1 blocks
    sizes = [(res, res), (res - 2 * p, res + 2 * p), (res + p, res - p)] if a.shape == "tiny" else \
            [(res, res), (24 * p, 32 * p)]   # 512x384 for B/16, 448x336 for L/14
    with torch.no_grad():
        for k, (H, W) in enumerate(sizes):
            x = rng.standard_normal((1, 3, H, W)).astype(np.float32)
            xin = save(f"image{k}.npy", x[0])
            xt = torch.from_numpy(x)
            native = H == res and W == res
            for nb in (vl, vl - 1):
                if native and nb == vl:
                    f = m.encode_image(xt).numpy()[0]
                else:
                    f = clip_ref.car_encode_image(m.visual, xt, nb).numpy()[0]
                cases.append({"kind": "image", "input": xin, "H": H, "W": W, "n_blocks": nb,
                              "expected": save(f"image{k}_feat_b{nb}.npy", f)})
            if not native or a.shape == "tiny":
                tokens, attn, pos = clip_ref.car_trunk(m.visual, xt, vl - 1)
                cases.append({"kind": "trunk", "input": xin, "H": H, "W": W, "n_blocks": vl - 1,
                              "expected": save(f"image{k}_trunk.npy", tokens.numpy()),
                              "attn": save(f"image{k}_trunk_attn.npy", torch.stack(attn).numpy()),
                              "pos": save(f"image{k}_pos.npy", pos.numpy())})
    man = {"shape": a.shape, "config": dict(zip(["embed", "image_resolution", "vision_layers", "vision_width",
                                                   "patch", "context_length", "vocab_size", "transformer_width",
                                                   "transformer_heads", "transformer_layers"], shape)),
           "seed": a.seed, "logit_scale_exp": float(m.logit_scale.exp()), "cases": cases,
           "generator": "scripts/gen_clip_fixtures.py (scripts/clip_ref.py = OpenAI clip/model.py + CaR clip_wrapper)",
           "torch": torch.__version__}
    with open(os.path.join(a.out, "manifest.json"), "w") as fp:
        json.dump(man, fp, indent=1)
    print(f"wrote {len(cases)} cases to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
