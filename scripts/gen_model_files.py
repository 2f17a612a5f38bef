#!/usr/bin/python3
"""gen_model_files.py — test fixtures for src/clip/weights.c: one tiny CLIP-shaped model in every file
format carseg reads, plus a float32 .npy dump of every tensor under its canonical (OpenAI) name.

Usage: /usr/bin/python3 scripts/gen_model_files.py OUTDIR   (about 2 s; torch 1.13, numpy)

The model mirrors OpenAI's clip/model.py structure (VisionTransformer: conv1, class_embedding,
positional_embedding, ln_pre, transformer.resblocks[i].{ln_1, attn=nn.MultiheadAttention, ln_2,
mlp.c_fc/gelu/c_proj}, ln_post, proj; text transformer, token_embedding, positional_embedding,
ln_final, text_projection, logit_scale). Every weight is rounded to a value that float16 and
bfloat16 both hold exactly, so every file must load to the same float32 values.

Writes into OUTDIR:
  ref/<name>.npy           canonical float32 tensors
  config.json              the architecture (what clip_config_from_weights must find)
  jit_f16.pt               traced, .half(), torch.jit.save (as OpenAI's released checkpoints)
  state_f16.pt, state_f32.pt, state_bf16.pt   torch.save(state_dict) (open_clip style)
  state_f16_zip64.pt       state_f16.pt re-zipped with zip64 records and data descriptors everywhere
  st_f32.safetensors, st_f16.safetensors, st_bf16.safetensors   OpenAI names
  hf_f32.safetensors, hf_bf16.safetensors      Hugging Face CLIPModel names (q/k/v split, projections
                                               transposed, an int64 position_ids buffer)
  views.pt + views/<name>.npy   torch.save of non-contiguous views sharing one storage
  views_parts/data.pkl, views_parts/0   the pickle and the storage inside views.pt (the hostile-input
                           tests re-zip truncated pickles)
  tiny_jit.pt + tiny/<name>.npy   a small traced module tree (fuzzing seed)
"""
import json
import os
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import torch
from torch import nn


# the block of OpenAI's clip/model.py, shared with the engine's reference (scripts/clip_ref.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_ref import LayerNorm, ResidualAttentionBlock  # noqa: E402


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, res, patch, width, layers, heads, out):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((res // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, embed, res, v_layers, v_width, patch, ctx, vocab, t_width, t_layers):
        super().__init__()
        self.context_length = ctx
        self.visual = VisionTransformer(res, patch, v_width, v_layers, v_width // 64, embed)
        mask = torch.empty(ctx, ctx).fill_(float("-inf")).triu_(1)
        self.transformer = Transformer(t_width, t_layers, t_width // 64, mask)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(torch.randn(ctx, t_width) * 0.01)
        self.ln_final = LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.randn(t_width, embed) * t_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        # integer buffers like the ones in OpenAI's released TorchScript archives: not weights
        self.register_buffer("input_resolution", torch.tensor(res))
        self.register_buffer("vocab_size", torch.tensor(vocab))

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        i = self.visual(image)
        t = self.encode_text(text)
        i = i / i.norm(dim=1, keepdim=True)
        t = t / t.norm(dim=1, keepdim=True)
        return self.logit_scale.exp() * i @ t.t()


CFG = dict(embed=32, res=32, v_layers=2, v_width=128, patch=8, ctx=8, vocab=50, t_width=64, t_layers=1)


def exact_f16_bf16(t):
    """round to a value both float16 and bfloat16 represent exactly"""
    t = t.to(torch.bfloat16).to(torch.float32)
    t[t.abs() < 2.0 ** -14] = 0
    return t


def write_safetensors(path, tensors, dtype):
    st_name = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    header, blobs, off = OrderedDict(), [], 0
    header["__metadata__"] = {"format": "pt"}
    for name, t in tensors.items():
        t = t.contiguous()
        if t.is_floating_point():
            t = t.to(dtype)
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype in (torch.float16, torch.bfloat16) \
            else t.numpy().tobytes()
        header[name] = {"dtype": st_name[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def to_hf(sd):
    """OpenAI names -> Hugging Face CLIPModel names (as transformers' conversion script does)"""
    hf = OrderedDict()
    top = {"visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
           "visual.class_embedding": "vision_model.embeddings.class_embedding",
           "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
           "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
           "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
           "visual.ln_post.weight": "vision_model.post_layernorm.weight",
           "visual.ln_post.bias": "vision_model.post_layernorm.bias",
           "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
           "positional_embedding": "text_model.embeddings.position_embedding.weight",
           "ln_final.weight": "text_model.final_layer_norm.weight",
           "ln_final.bias": "text_model.final_layer_norm.bias",
           "logit_scale": "logit_scale"}
    sub = {"attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
           "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
           "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
           "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
           "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}
    for k, v in sd.items():
        if k in top:
            hf[top[k]] = v
        elif k == "visual.proj":
            hf["visual_projection.weight"] = v.t().contiguous()
        elif k == "text_projection":
            hf["text_projection.weight"] = v.t().contiguous()
        else:
            tower = "vision_model" if k.startswith("visual.") else "text_model"
            rest = k[len("visual."):] if k.startswith("visual.") else k
            parts = rest.split(".")   # transformer.resblocks.N.rest
            pre = "%s.encoder.layers.%s." % (tower, parts[2])
            r = ".".join(parts[3:])
            if r in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if r.endswith("weight") else "bias"
                q, kk, vv = v.chunk(3, dim=0)
                hf[pre + "self_attn.q_proj." + kind] = q.contiguous()
                hf[pre + "self_attn.k_proj." + kind] = kk.contiguous()
                hf[pre + "self_attn.v_proj." + kind] = vv.contiguous()
            else:
                hf[pre + sub[r]] = v
    hf["text_model.embeddings.position_ids"] = torch.arange(CFG["ctx"]).unsqueeze(0)
    return hf


def rezip64(src, dst):
    """the same archive with zip64 extra fields, zip64 end records and data descriptors"""
    zin = zipfile.ZipFile(src)
    out = bytearray()
    cd = bytearray()
    entries = zin.infolist()
    for info in entries:
        data = zin.read(info.filename)
        name = info.filename.encode()
        crc = zlib.crc32(data) & 0xffffffff
        off = len(out)
        extra = struct.pack("<HHQQ", 1, 16, 0, 0)
        out += struct.pack("<IHHHHHIIIHH", 0x04034b50, 45, 0x0808, 0, 0, 0, 0, 0xffffffff, 0xffffffff,
                           len(name), len(extra)) + name + extra
        out += data
        out += struct.pack("<IIQQ", 0x08074b50, crc, len(data), len(data))
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 45, 45, 0x0808, 0, 0, 0, crc, 0xffffffff,
                          0xffffffff, len(name), len(cextra), 0, 0, 0, 0, 0xffffffff) + name + cextra
    cdoff = len(out)
    out += cd
    z64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064b50, 44, 45, 45, 0, 0, len(entries), len(entries), len(cd), cdoff)
    out += struct.pack("<IIQI", 0x07064b50, 0, z64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, 0xffff, 0xffff, 0xffffffff, 0xffffffff, 0)
    with open(dst, "wb") as f:
        f.write(out)


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "ref"), exist_ok=True)
    os.makedirs(os.path.join(out, "views"), exist_ok=True)
    torch.manual_seed(0)
    model = CLIP(**CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(exact_f16_bf16(p.detach() + 0.02 * torch.randn_like(p)))
    sd = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items() if v.is_floating_point())
    for k, v in sd.items():
        np.save(os.path.join(out, "ref", k + ".npy"), v.numpy().astype(np.float32))
    cfg = dict(CFG, v_heads=CFG["v_width"] // 64, t_heads=CFG["t_width"] // 64, v_grid=CFG["res"] // CFG["patch"],
               logit_scale=float(sd["logit_scale"]))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)

    image = torch.randn(2, 3, CFG["res"], CFG["res"])
    text = torch.randint(1, CFG["vocab"], (2, CFG["ctx"]))
    with torch.no_grad():
        traced = torch.jit.trace(model, (image, text), check_trace=False)
    traced.half()
    torch.jit.save(traced, os.path.join(out, "jit_f16.pt"))

    full = model.state_dict()
    for dt, tag in ((torch.float16, "f16"), (torch.float32, "f32"), (torch.bfloat16, "bf16")):
        torch.save(OrderedDict((k, v.to(dt) if v.is_floating_point() else v) for k, v in full.items()),
                   os.path.join(out, "state_%s.pt" % tag))
        write_safetensors(os.path.join(out, "st_%s.safetensors" % tag), sd, dt)
    rezip64(os.path.join(out, "state_f16.pt"), os.path.join(out, "state_f16_zip64.pt"))
    write_safetensors(os.path.join(out, "hf_f32.safetensors"), to_hf(sd), torch.float32)
    write_safetensors(os.path.join(out, "hf_bf16.safetensors"), to_hf(sd), torch.bfloat16)

    base = (torch.arange(120, dtype=torch.float32) / 8).half().reshape(6, 20)
    views = OrderedDict([
        ("transposed", base.t()),                                  # strides (1, 20)
        ("rows", base[2:5]),                                       # offset 40, contiguous
        ("column", base[:, 3]),                                    # stride 20, offset 3
        ("permuted4", base.reshape(2, 3, 4, 5).permute(0, 3, 1, 2)),
        ("stepped", base[1::2, ::3]),
    ])
    torch.save(views, os.path.join(out, "views.pt"))
    for k, v in views.items():
        np.save(os.path.join(out, "views", k + ".npy"), v.float().contiguous().numpy())
    os.makedirs(os.path.join(out, "views_parts"), exist_ok=True)
    z = zipfile.ZipFile(os.path.join(out, "views.pt"))
    for n in z.namelist():
        if n.endswith("/data.pkl") or n.endswith("/data/0"):
            with open(os.path.join(out, "views_parts", n.split("/")[-1]), "wb") as f:
                f.write(z.read(n))

    os.makedirs(os.path.join(out, "tiny"), exist_ok=True)
    tiny = nn.Sequential(OrderedDict([("fc", nn.Linear(3, 2)), ("ln", LayerNorm(2))]))
    with torch.no_grad():
        for p in tiny.parameters():
            p.copy_(exact_f16_bf16(torch.randn_like(p)))
    for k, v in tiny.state_dict().items():
        np.save(os.path.join(out, "tiny", k + ".npy"), v.numpy())
    t = torch.jit.trace(tiny, torch.randn(1, 3))
    t.half()
    torch.jit.save(t, os.path.join(out, "tiny_jit.pt"))


if __name__ == "__main__":
    main()
