"""clip_ref.py — a faithful re-creation of OpenAI CLIP's clip/model.py (ViT variant only) plus the
image path of CaR's clip_wrapper.py, for fixture generation and benchmark baselines.

Same module structure and parameter names as OpenAI's code (so state_dict keys match the released
checkpoints): LayerNorm computed in fp32, QuickGELU, ResidualAttentionBlock with
nn.MultiheadAttention, Transformer, VisionTransformer, CLIP.encode_text / encode_image.
Run with Debian's /usr/bin/python3 (torch 1.13). Never imported by the product.
"""
import json
import struct
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """Subclass torch's LayerNorm to handle fp16 (computes in fp32)."""

    def forward(self, x):
        orig_type = x.dtype
        ret = super().forward(x.type(torch.float32))
        return ret.type(orig_type)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask

    def attention(self, x, need_weights=False):
        mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=need_weights, attn_mask=mask)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))[0]
        x = x + self.mlp(self.ln_2(x))
        return x

    def forward_with_weights(self, x):
        """CaR's _CustomBlock: also returns the head-averaged attention probabilities."""
        a, w = self.attention(self.ln_1(x), need_weights=True)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, w


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        x = x.permute(0, 2, 1)
        x = torch.cat([self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        x = self.ln_post(x[:, 0, :])
        if self.proj is not None:
            x = x @ self.proj
        return x


class CLIP(nn.Module):
    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers):
        super().__init__()
        self.context_length = context_length
        vision_heads = vision_width // 64
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_heads, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       self.build_attention_mask())
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self):
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (self.transformer.width ** -0.5) * ((2 * self.transformer.layers) ** -0.5)
        attn_std = self.transformer.width ** -0.5
        fc_std = (2 * self.transformer.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    def build_attention_mask(self):
        mask = torch.empty(self.context_length, self.context_length)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, image):
        return self.visual(image.type(self.dtype))

    def encode_text(self, text):
        x = self.token_embedding(text).type(self.dtype)
        x = x + self.positional_embedding.type(self.dtype)
        x = x.permute(1, 0, 2)
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        x = self.ln_final(x).type(self.dtype)
        x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection
        return x


# ------------------------------------------------------------------------------------------------
# CaR's clip_wrapper.py image path

def upsample_pos_embed(embed, gh, gw):
    """_upsample_position_embedding: bilinear (align_corners=False) on the patch grid, CLS first,
    then .half() (Q16)."""
    first, rest = embed[:1, :], embed[1:, :]
    n, dim = rest.size(0), rest.size(1)
    size = int(np.sqrt(n))
    rest = rest.permute(1, 0).view(1, dim, size, size).contiguous()
    rest = F.interpolate(rest, size=(gh, gw), mode="bilinear", align_corners=False)
    rest = rest.view(dim, -1).contiguous().permute(1, 0)
    return torch.cat([first, rest], 0).half()


def car_trunk(visual, x, n_blocks):
    """_CustomVisionTransformer.forward with n_blocks blocks: tokens (L, width) and the list of
    head-averaged attentions (L, L)."""
    p = visual.conv1.kernel_size[0]
    h, w = x.shape[-2], x.shape[-1]
    pos = upsample_pos_embed(visual.positional_embedding, h // p, w // p)
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    zeros = torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([visual.class_embedding.to(x.dtype) + zeros, x], dim=1)
    x = x + pos.to(x.dtype)
    x = visual.ln_pre(x).permute(1, 0, 2)
    attn = []
    for i in range(n_blocks):
        x, a = visual.transformer.resblocks[i].forward_with_weights(x)
        attn.append(a[0])
    return x[:, 0, :], attn, pos.float()


def car_encode_image(visual, x, n_blocks):
    """CLIPWrapper.forward's image features: n_blocks blocks, ln_post on CLS, @ proj."""
    tok, _, _ = car_trunk(visual, x, n_blocks)
    return visual.ln_post(tok[0:1]) @ visual.proj


# ------------------------------------------------------------------------------------------------
# model construction and files

SHAPES = {
    # name: (embed, image_res, v_layers, v_width, patch, ctx, vocab, t_width, t_heads, t_layers)
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
}


def random_clip(shape, seed, fp16_exact=True):
    """A CLIP of the given shape tuple with random weights; every weight rounded to fp16 (as the
    released checkpoints are) so F16 and F32 files hold the same values."""
    torch.manual_seed(seed)
    e, res, vl, vw, p, ctx, voc, tw, th, tl = shape
    m = CLIP(e, res, vl, vw, p, ctx, voc, tw, th, tl).eval()
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                if t.dim() == 1 and ("ln_" in name or "ln_final" in name) and name.endswith("weight"):
                    t.add_(0.1 * torch.randn_like(t))   # non-trivial LayerNorm parameters
                elif name.endswith("bias"):
                    t.add_(0.02 * torch.randn_like(t))
                if fp16_exact:
                    t.copy_(t.half().float())
    return m


def save_safetensors(path, state, dtype="F16"):
    """Writes a safetensors file with OpenAI names (no external library)."""
    header, blobs, off = {}, [], 0
    for k, v in state.items():
        if k in ("input_resolution", "context_length", "vocab_size") or not v.is_floating_point():
            continue
        a = v.detach().cpu().numpy().astype(np.float16 if dtype == "F16" else np.float32)
        b = a.tobytes()
        header[k] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
