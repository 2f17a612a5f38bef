#!/usr/bin/python3
"""bench_torch_clip.py — the PyTorch baseline for bench/bench_clip.c: the same CLIP shapes with
random weights (scripts/clip_ref.py = OpenAI clip/model.py), the same thread count, fp32 on CPU.
Prints one JSON object {case: milliseconds, case_cpu: CPU milliseconds of all threads in that
run} on stdout (best of --reps after one warm-up run).
Cases: b16_224 (ViT-B/16 encode_image 224x224), b16_512x384 (ViT-B/16, 24x32 grid with the
resized positional embedding, all blocks), l14_224 (ViT-L/14 encode_image), text300 (ViT-B/16 text
tower, 300 prompts x 77 tokens, as encode_text runs them).
Exit status 3 when torch is missing (the bench then skips the comparison).
"""
import argparse
import json
import os
import sys
import time

try:
    import torch
except ImportError:
    print("python3-torch is not installed", file=sys.stderr)
    sys.exit(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_ref  # noqa: E402


def best_ms(fn, reps, warm=True):
    """(wall ms, process CPU ms) of the fastest of reps runs"""
    if warm:
        fn()
    best = (float("inf"), 0.0)
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        w = (time.perf_counter() - t) * 1e3
        if w < best[0]:
            best = (w, (time.process_time() - c) * 1e3)
    return best


def image_at(visual, x, pos):
    """VisionTransformer.forward with a given positional embedding (all blocks, CLS, proj)."""
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    z = torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([visual.class_embedding.to(x.dtype) + z, x], dim=1) + pos
    x = visual.ln_pre(x).permute(1, 0, 2)
    x = visual.transformer(x).permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--cases", default="b16_224,b16_512x384,l14_224,text300")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cases = a.cases.split(",")
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if any(c.startswith("b16") or c == "text300" for c in cases):
            m = clip_ref.random_clip(clip_ref.SHAPES["ViT-B/16"], 1, fp16_exact=False)
            if "b16_224" in cases:
                x = torch.randn(1, 3, 224, 224, generator=g)
                out["b16_224"], out["b16_224_cpu"] = best_ms(lambda: m.encode_image(x), a.reps)
            if "b16_512x384" in cases:
                x = torch.randn(1, 3, 384, 512, generator=g)
                pos = clip_ref.upsample_pos_embed(m.visual.positional_embedding, 24, 32).float()
                out["b16_512x384"], out["b16_512x384_cpu"] = best_ms(lambda: image_at(m.visual, x, pos), a.reps)
            if "text300" in cases:
                tok = torch.zeros(a.prompts, 77, dtype=torch.long)
                for i in range(a.prompts):
                    n = 5 + (i * 7) % 12          # the same lengths as bench_clip.c
                    tok[i, 0] = 49406
                    tok[i, 1:n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
                    tok[i, n - 1] = 49407
                m.encode_text(tok[:16])               # warm-up on a few prompts, then one timed run
                out["text300"], out["text300_cpu"] = best_ms(lambda: m.encode_text(tok), 1, warm=False)
            del m
        if "l14_224" in cases:
            m = clip_ref.random_clip(clip_ref.SHAPES["ViT-L/14"], 2, fp16_exact=False)
            x = torch.randn(1, 3, 224, 224, generator=g)
            out["l14_224"], out["l14_224_cpu"] = best_ms(lambda: m.encode_image(x), a.reps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
