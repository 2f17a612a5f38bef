#!/usr/bin/python3
"""car_oracle.py — an independent Python re-implementation of the reference CaR pipeline (CLIP as RNN,
google-research clip_as_rnn), used as a test oracle for the C pipeline (`carseg segment`).

It restates, quirk by quirk, what /work/shared/spec/car_method.md describes (no upstream CaR code is
imported or copied): the recurrent loop (§1.2: >= 2 rounds, stop when the survivor COUNT repeats,
strict `> theta`, argmax fallback, `max(masks) == 0` guard), the CLIP-ES mask proposal generator (§2:
PIL bicubic resize to ceil16, fp16-rounded bilinear positional embedding (Q16), layers-1 blocks
without grad, the last block re-run per query with Grad-CAM through torch AUTOGRAD on the output of
`ln_1`, mean of the patch tokens, softmax probability over fg + bg rows (Q6), min-max twice, the
fg-only retry, CAA: last 8 attentions, Sinkhorn x3, symmetrise, square, boxes from
cv2.threshold/findContours(RETR_TREE)/boundingRect with the gw-1/gh-1 clamp (Q7), cv2.resize
INTER_LINEAR to the original size), the visual prompts (§3.2, real OpenCV calls in the fixed order
blur → gray → black → circle → rectangle → contour; BGR2GRAY on RGB (Q3)), the classifier (§3.1/3.3:
torchvision-style Resize(224) + CenterCrop(224) with PIL, `layers-1` visual blocks, CLS → ln_post →
proj (Q2), 15 templates and the double softmax (Q5), the model's own logit_scale.exp() (Q19)), Q1
(raw names in the round-1 CAM, "a clean origami <q>." afterwards), the CRF inputs (§4.1, Q4 wrap),
the label assembly (§4.2), the thing + stuff two-pass mode (§4.4), refer mode (§7, per-sentence
generator, single-template classifier, 2-label CRF per sentence, merge_masks_simple), and Q17
(duplicate names collide in `init_clip_text.index`).

Models: OpenAI-named safetensors files (F16/F32) loaded with a tiny reader into scripts/clip_ref.py's
CLIP (a copy of OpenAI's clip/model.py); tokenizer: scripts/clip_tokenizer_oracle.py.

THE CRF STEP IS NOT INDEPENDENT. pydensecrf cannot be installed here, so `--crf carseg` (default when
the binary is found) hands the exact reference inputs (the Q4-wrapped BGR features and the (K+1, H, W)
probabilities) to the C implementation `carseg crf --features F.npy --probs P.npy --out-labels L.png
--out-marginals Q.npy` (CaR's parameters are its defaults). `--crf none` stops before the CRF: it
writes crf_image_u8.npy / crf_probs_in.npy (and the rounds) but no final_masks.npy / labels.png.
Everything before the CRF is independent of the C code.

Usage:
  car_oracle.py IMAGE --out DIR [--classes "a|b|c" | --voc | --refer "s1|s2"]
        [--generator sg.safetensors] [--classifier sc.safetensors] [--vocab bpe.txt.gz]
        [--eta .4] [--theta .6] [--lambda .4] [--prompts circle,blur] [--templates default|single]
        [--bg "w1|w2"] [--bg-factor 1] [--stuff "i,j"] [--stuff-prompts gray,blur]
        [--stuff-bg-factor 1] [--crf carseg|none] [--carseg BIN] [--resize WxH] [--crop x,y,w,h]
        [--fill R,G,B]
        [--fixture-extras]
  --stuff gives the 0-based indices (into --classes) of the stuff classes: two-pass mode (§4.4),
  pass 1 = the other (thing) classes with the usual bg words, pass 2 = the stuff classes with the
  thing names as bg words; labels = index in --classes + 1, stuff painted first, things over it.
  --resize/--crop/--fill prepare the input from IMAGE (crop, then PIL bicubic resize, then an optional
  constant colour of that size); the image the
  pipeline really received is written to DIR/input.png.

Output (the layout of `carseg segment --dump DIR`): per round k (1-based) `round<k>.json` with
`queries` (the live queries as given, untemplated), `scores` (diagonal scores, same order),
`survivors` (as given), plus extras `kept_idx`, `query_idx` (indices into the input list),
`cam_text`, `clip_text`, `boxes`; `round<k>_cams.npy` (n, H, W float32: refined CAMs = the mask
proposals); then `final_masks.npy` (N, H, W float32 0/1, input order), `final_scores.npy`,
`labels.png` (8-bit palette, 0 = bg, k = k-th class; refer mode: 0/1 merged mask), `summary.json`.
Two-pass mode prefixes the round files with `things_` / `stuff_`. Refer mode also writes
`refer_merged.npy`. Duplicate names (Q17): labels.png follows the reference (the later duplicate
overwrites the first one's slot); `labels_q17fixed.png` is the "each survivor keeps its own index"
variant, and `labels_q17tie.png` the reference rule when the duplicates' CRF channels tie exactly
(see the comment in main). `--fixture-extras` also writes `r<k>_gradcam_grid.npy`, `r<k>_cls_P.npy`, `r<k>_cls_S.npy`,
`r<k>_prompted_NN.png`, `r<k>_gen_probs.npy`, gen_input.npy, crf_image_u8.npy, crf_probs_in.npy.

Validation (scripts/car_oracle_selfcheck.py, 126 checks on the three upstream cases coffee300_voc,
chelsea_voc, astronaut_cocolike): survivors and round counts identical; diagonal scores within 4e-6;
generator input, positional embedding, trunk output/attention (coffee300) and fg/bg text features
bit-exact or within 6e-8; Grad-CAM grids within 8e-7 (1-3 float32 ulps: autograd summation order);
boxes identical; masks end to end within 1.6e-4 (the refined CAM's min-max amplifies the grid ulps
where the refined map is flat); from the fixture's own grid, CAA masks are exact (coffee300, chelsea)
or within 2.4e-5 (astronaut, 1025-token trunk within 5e-7); prompted images from the fixture masks
exact (blur, gray, circle); end to end, prompted images differ only at a few pixels whose CAM lies
within 1e-3 of eta; cls_S/cls_P exact from the fixture masks, within 1e-4 end to end; CRF inputs
(Q4 features exact, probabilities within 2.4e-5); with the C `carseg crf`, final scores exact and
label maps >= 99.998% equal. Not covered by any upstream fixture (implemented from the spec text
only): the black, rectangle and contour prompts, refer mode, the two-pass mode, Q17.

Use: tests/test_car_oracle.c runs this oracle and `carseg segment --dump` on 9 new small cases and
compares them (survivors equal, scores 1e-4, CAMs 1e-3, label maps >= 99.9 %). Measured C vs
oracle: scores within 6e-7, CAMs within 5.5e-5, except a flat grey image (1.4e-3: ill-conditioned,
the oracle itself moves by 4.7e-4 between float32 and float64). Two configurations are
ill-conditioned by nature and must not be read as bugs: identical query names (their CAMs differ
by float32 ulps in autograd, and the CRF breaks the near-tie arbitrarily; see labels_q17tie.png)
and many survivors with the tiny random models (nearly identical CAMs, CRF argmax gaps ~1e-6).

Deviations (documented, where the reference crashes): a binarised mask that is empty but has
sum > 1 skips the circle/rectangle (the reference takes the mean of an empty set and crashes); an
all-zero CAM in round 1 keeps the zeros (the reference crashes, Q9); an all-background CRF gives an
all-background label map (Q9). Refer mode filters the list of sentences (Q18: intended behaviour).
Run with Debian's /usr/bin/python3 (torch 1.13, numpy, cv2, PIL, scipy).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

VOC = ["aeroplane", "bicycle", "bird avian", "boat", "bottle", "bus", "car", "cat", "chair seat", "cow",
       "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human", "pottedplant",
       "sheep", "sofa", "train", "tvmonitor screen"]
BG = ["ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
      "railway", "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street",
      "valley", "bridge"]
TPL = "a clean origami {}."
TEMPLATES = [
    "a clean origami {}.", "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene",
    "There is the {} in the scene", "a photo of a {} in the scene", "a photo of a small {}.",
    "a photo of a medium {}.", "a photo of a large {}.", "This is a photo of a small {}.",
    "This is a photo of a medium {}.", "This is a photo of a large {}.",
    "There is a small {} in the scene.", "There is a medium {} in the scene.",
    "There is a large {} in the scene."]
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT_ORDER = ["blur", "gray", "black", "circle", "rectangle", "contour"]


# ------------------------------------------------------------------------------------------------
# models

def read_safetensors(path):
    """{name: float32 numpy array} from a safetensors file (F16/F32/BF16)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        buf = raw[base + a:base + b]
        if v["dtype"] == "F16":
            arr = np.frombuffer(buf, "<f2").astype(np.float32)
        elif v["dtype"] == "F32":
            arr = np.frombuffer(buf, "<f4").astype(np.float32)
        elif v["dtype"] == "BF16":
            arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            continue
        out[k] = arr.reshape(v["shape"]).copy()
    return out


def load_clip(path):
    import torch
    import clip_ref
    sd = read_safetensors(path)
    vw = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    vl = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    embed = sd["text_projection"].shape[1]
    ctx = sd["positional_embedding"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    tw = sd["ln_final.weight"].shape[0]
    tl = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    m = clip_ref.CLIP(embed, grid * patch, vl, vw, patch, ctx, vocab, tw, tw // 64, tl)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    return m.float().eval()


class Text:
    def __init__(self, model, tok):
        self.m, self.tok, self.cache = model, tok, {}

    def ids(self, s):
        import torch
        t = self.tok.tokenize(s, 77)
        x = torch.zeros(1, self.m.context_length, dtype=torch.long)
        x[0, :len(t)] = torch.tensor(t)
        return x

    def one(self, s):
        """encode_text of one string (batch 1), unnormalised."""
        import torch
        if s not in self.cache:
            with torch.no_grad():
                self.cache[s] = self.m.encode_text(self.ids(s))[0].float()
        return self.cache[s]

    def batch(self, strings):
        import torch
        x = torch.cat([self.ids(s) for s in strings], 0)
        with torch.no_grad():
            return self.m.encode_text(x).float()


# ------------------------------------------------------------------------------------------------
# image helpers

def to_tensor_norm(pil):
    import torch
    a = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(a).permute(2, 0, 1).contiguous()
    m = torch.tensor(MEAN).view(3, 1, 1)
    s = torch.tensor(STD).view(3, 1, 1)
    return ((t - m) / s)[None]


def clip_preprocess(pil, size=224):
    """torchvision Resize(size) (int: shorter side) bicubic + CenterCrop(size), RGB, Normalize."""
    from PIL import Image
    w, h = pil.size
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long_ / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    if (nw, nh) != (w, h):
        pil = pil.resize((nw, nh), Image.BICUBIC)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    pil = pil.crop((left, top, left + size, top + size))
    return to_tensor_norm(pil)


def scale_cam(img, target=None):
    import cv2
    img = img - np.min(img)
    img = img / (1e-15 + np.max(img))
    if target is not None:
        img = cv2.resize(img, target)
    return np.float32(img)


# utils.scoremap2bbox (CLIP-ES boxes with the reference's clamp, Q7): shared with cam_ref_torch.py
from cam_ref_torch import scoremap2bbox  # noqa: E402


# ------------------------------------------------------------------------------------------------
# §2 mask proposal generator

class Generator:
    def __init__(self, model, text):
        self.m, self.text = model, text
        self.scale = float(model.logit_scale.exp())

    def prepare(self, pil):
        """Preprocess + trunk (blocks 0..L-2, no grad) + the text-independent affinity (CAA)."""
        import torch
        from PIL import Image
        import clip_ref
        W, H = pil.size
        p = self.m.visual.conv1.kernel_size[0]
        Hp, Wp = -(-H // p) * p, -(-W // p) * p
        img = pil.convert("RGB")
        if (Wp, Hp) != (W, H):
            img = img.resize((Wp, Hp), Image.BICUBIC)
        x = to_tensor_norm(img)
        v = self.m.visual
        nl = len(v.transformer.resblocks)
        with torch.no_grad():
            tok, attn, pos = clip_ref.car_trunk(v, x, nl - 1)
        self.gen_input = x.numpy()
        self.pos = pos.numpy()
        self.x_in = tok.detach()[:, None, :]          # (L, 1, C)
        self.trunk_attn = [a.detach() for a in attn]  # (L, L) each
        self.gh, self.gw, self.H, self.W = Hp // p, Wp // p, H, W
        blk = v.transformer.resblocks[nl - 1]
        with torch.no_grad():
            self.a0 = blk.ln_1(self.x_in)
        self.blk = blk
        self.aff = None

    def head(self, a, T):
        """Last block (grad through `a` = ln_1 output), ln_post, mean over patches, proj, softmax."""
        import torch
        v, blk = self.m.visual, self.blk
        att, w = blk.attn(a, a, a, need_weights=True)
        x = self.x_in + att
        x = x + blk.mlp(blk.ln_2(x))
        x = x.permute(1, 0, 2)
        x = v.ln_post(x)
        e = torch.mean(x[:, 1:, :], dim=1) @ v.proj
        e = e / e.norm(dim=1, keepdim=True)
        T = T.to(e.dtype)
        T = T / T.norm(dim=1, keepdim=True)
        return torch.softmax((self.scale * e @ T.t()).float(), dim=-1), w

    def transition(self, attn_last):
        import torch
        aff = torch.stack([a[None, 1:, 1:] for a in self.trunk_attn] + [attn_last[:, 1:, 1:]], 0)[-8:]
        aff = torch.mean(aff, dim=0)[0].float()
        tm = aff / torch.sum(aff, dim=0, keepdim=True)
        tm = tm / torch.sum(tm, dim=1, keepdim=True)
        for _ in range(2):
            tm = tm / torch.sum(tm, dim=0, keepdim=True)
            tm = tm / torch.sum(tm, dim=1, keepdim=True)
        tm = (tm + tm.transpose(1, 0)) / 2
        return torch.matmul(tm, tm)

    def run(self, fg_texts, bg_feats, lam):
        """masks (n, H, W), grids (n, gh, gw), probs (n+nb), boxes."""
        import torch
        fg = torch.stack([self.text.one(s) for s in fg_texts], 0)
        fg = fg / fg.norm(dim=-1, keepdim=True)
        fg = fg / fg.norm(dim=-1, keepdim=True)       # mean over the (single) text, renormalised
        self.fg_emb = fg.numpy()
        T_all = torch.cat([fg, bg_feats], 0)
        gh, gw, C = self.gh, self.gw, self.a0.shape[-1]
        act = self.a0[1:, 0, :].reshape(gh, gw, C).permute(2, 0, 1).numpy()
        n = len(fg_texts)
        masks = np.zeros((n, self.H, self.W), np.float32)
        grids = np.zeros((n, gh, gw), np.float32)
        probs, allboxes, calls = [], [], []
        for i in range(n):
            def gradcam(T):
                a = self.a0.clone().requires_grad_(True)
                p, aw = self.head(a, T)
                p[:, i].sum().backward()
                g = a.grad[1:, 0, :].reshape(gh, gw, C).permute(2, 0, 1).numpy()
                w = np.mean(g, axis=(1, 2))
                cam = (w[:, None, None] * act).sum(axis=0)
                cam = np.maximum(cam, 0).astype(np.float32)
                return p, aw, scale_cam(scale_cam(cam))
            p, aw, cam = gradcam(T_all)
            rows = T_all.shape[0]
            probs.append(p[0].detach().numpy())
            if self.aff is None:
                self.aff = self.transition(aw.detach())
            if cam.max() == 0:
                _, _, cam = gradcam(fg)
                rows = fg.shape[0]
            calls.append({"target": i, "n_text_rows": rows, "max": float(cam.max())})
            grids[i] = cam
            box_mask = torch.zeros((gh, gw))
            boxes = scoremap2bbox(cam, lam)
            for x0, y0, x1, y1 in boxes:
                box_mask[y0:y1, x0:x1] = 1
            allboxes.append(boxes)
            tm = self.aff * box_mask.view(1, gh * gw)
            refined = torch.matmul(tm, torch.FloatTensor(cam).view(-1, 1)).reshape(gh, gw)
            masks[i] = scale_cam(refined.numpy().astype(np.float32), (self.W, self.H))
        return masks, grids, np.stack(probs, 0), allboxes, calls


# ------------------------------------------------------------------------------------------------
# §3 visual prompts and classifier

def visual_prompt(img, m, eta, types):
    """img: (H, W, 3) uint8 RGB; m: (H, W) float mask. Returns (prompted image, applied)."""
    import cv2
    from scipy.ndimage import binary_fill_holes
    if float(np.sum(m)) <= 1:
        return img.copy(), False
    M = (m > eta).astype(np.uint8)
    out = img.copy()
    sel = M[..., None].astype(bool)
    if "blur" in types:
        out = np.where(sel, out, cv2.GaussianBlur(out, (15, 15), 0))
    if "gray" in types:
        g = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
        out = np.where(sel, out, np.repeat(g[..., None], 3, axis=2))
    if "black" in types:
        out = np.where(sel, out, 0).astype(np.uint8)
    out = np.ascontiguousarray(out, dtype=np.uint8)
    if ("circle" in types or "rectangle" in types) and M.any():
        ys, xs = np.nonzero(M)
        cy, cx = int(np.mean(ys)), int(np.mean(xs))
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        if "circle" in types:
            cv2.ellipse(out, (cx, cy), (w // 2, h // 2), 0, 0, 360, (255, 0, 0), 1)
        if "rectangle" in types:
            cv2.rectangle(out, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), (255, 0, 0), 1)
    if "contour" in types:
        filled = binary_fill_holes(M).astype(np.uint8)
        cs = cv2.findContours(filled, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        cv2.drawContours(out, cs, -1, (255, 0, 0), 1)
    return out, True


class Classifier:
    def __init__(self, model, text):
        self.m, self.text = model, text
        self.scale = float(model.logit_scale.exp())

    def run(self, images, sem_text):
        """images: list of (H, W, 3) uint8; sem_text: list (templates) of lists (n) of strings.
        Returns P (n, n), S (K, n, n), image emb (n, E)."""
        import torch
        from PIL import Image
        import clip_ref
        v = self.m.visual
        x = torch.cat([clip_preprocess(Image.fromarray(im)) for im in images], 0)
        with torch.no_grad():
            feats = []
            for j in range(x.shape[0]):
                feats.append(clip_ref.car_encode_image(v, x[j:j + 1], len(v.transformer.resblocks) - 1))
            img = torch.cat(feats, 0).float()
            imgn = img / img.norm(dim=1, keepdim=True)
            S = []
            for row in sem_text:
                t = self.text.batch(row)
                t = t / t.norm(dim=1, keepdim=True)
                S.append(torch.softmax(self.scale * imgn @ t.t(), dim=-1))
            S = torch.stack(S, 0)
            P = torch.softmax(S.sum(0), dim=-1) if len(sem_text) > 1 else S[0]
        return P.numpy(), S.numpy(), img.numpy()


# ------------------------------------------------------------------------------------------------
# §1.2 the loop (one CaR call)

def car_forward(gen, cls, pil, text, bg_words, eta, theta, lam, prompts, templates, refer, dump,
                prefix, extras):
    import torch
    img = np.asarray(pil.convert("RGB"))
    clip_text = [TPL.format(q) for q in text]
    init_idx = list(range(len(text)))                # query index of each live query
    cam_text = list(text)
    sem_text = [list(clip_text)] if templates is None else [[t.format(q) for q in text] for t in templates]
    bgf = torch.stack([gen.text.one(TPL.format(w)) for w in bg_words], 0)
    bgf = bgf / bgf.norm(dim=-1, keepdim=True)
    bgf = bgf / bgf.norm(dim=-1, keepdim=True)    # mean over the single template, renormalised
    if not refer:
        gen.prepare(pil)
    last, prev_masks, k = 0, None, 0
    rounds = []
    while True:
        k += 1
        if refer:
            # the reference re-runs the generator (trunk included) per sentence; the trunk and
            # the affinity are deterministic and text-independent, so prepare() runs once.
            if k == 1:
                gen.prepare(pil)
            parts = [gen.run([q], bgf, lam) for q in cam_text]
            masks = np.concatenate([p[0] for p in parts], 0)
            grids = np.concatenate([p[1] for p in parts], 0)
            probs = [p[2][0] for p in parts]
            boxes = [p[3][0] for p in parts]
        else:
            masks, grids, probs, boxes, _ = gen.run(cam_text, bgf, lam)
        prompted, applied = zip(*[visual_prompt(img, m, eta, prompts) for m in masks])
        P, S, _ = cls.run(list(prompted), sem_text)
        s = np.diag(P).astype(np.float64)
        keep = [i for i in range(len(s)) if s[i] > theta]
        if not keep:
            keep = [int(np.argmax(s))]
        scores = np.zeros(len(s), np.float32)
        scores[keep] = s[keep]
        live = [text[j] for j in init_idx]
        rec = {"round": k, "queries": live, "scores": [float(x) for x in s],
               "survivors": [live[i] for i in keep], "kept_idx": keep,
               "query_idx": list(init_idx), "survivor_idx": [init_idx[i] for i in keep],
               "cam_text": list(cam_text), "clip_text": list(clip_text), "boxes": boxes,
               "prompt_applied": list(applied), "masks_max": float(masks.max())}
        rounds.append(rec)
        with open(os.path.join(dump, "%sround%d.json" % (prefix, k)), "w") as f:
            json.dump(rec, f, indent=1)
        np.save(os.path.join(dump, "%sround%d_cams.npy" % (prefix, k)), masks.astype(np.float32))
        if extras:
            import cv2
            np.save(os.path.join(dump, "%sr%d_gradcam_grid.npy" % (prefix, k)), grids)
            np.save(os.path.join(dump, "%sr%d_cls_P.npy" % (prefix, k)), P)
            np.save(os.path.join(dump, "%sr%d_cls_S.npy" % (prefix, k)), S)
            np.save(os.path.join(dump, "%sr%d_gen_probs.npy" % (prefix, k)), np.array(probs))
            for i, im in enumerate(prompted):
                cv2.imwrite(os.path.join(dump, "%sr%d_prompted_%02d.png" % (prefix, k, i)),
                            cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
            if k == 1 and not refer:
                np.save(os.path.join(dump, prefix + "gen_input.npy"), gen.gen_input)
        init_idx = [init_idx[i] for i in keep]
        clip_text = [clip_text[i] for i in keep]
        sem_text = [[row[i] for i in keep] for row in sem_text]
        cam_text = list(clip_text)
        if masks.max() == 0 and prev_masks is not None:
            masks = prev_masks
        prev_masks = masks
        npos = int(np.count_nonzero(scores > 0))
        if npos == last:
            break
        last = npos
    fin_scores = np.array([scores[i] for i in keep], np.float32)
    return masks, fin_scores, init_idx, [clip_text[i] for i in range(len(init_idx))], rounds


# ------------------------------------------------------------------------------------------------
# §4 CRF inputs and the pluggable CRF

def crf_features(img):
    f = img.astype(np.float32)[..., ::-1] - np.array([104.008, 116.669, 122.675], np.float32)
    return np.ascontiguousarray((np.trunc(f).astype(np.int64) % 256).astype(np.uint8))


def run_crf(mode, binary, feats, probs, work):
    """Returns (labels (H, W) int, marginals) or None when mode == none."""
    if mode == "none":
        return None
    fp, pp = os.path.join(work, "crf_feat.npy"), os.path.join(work, "crf_probs.npy")
    lp, qp = os.path.join(work, "crf_labels.npy"), os.path.join(work, "crf_q.npy")
    np.save(fp, feats)
    np.save(pp, probs.astype(np.float32))
    r = subprocess.run([binary, "crf", "--features", fp, "--probs", pp, "--out-labels", lp,
                        "--out-marginals", qp], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit("car_oracle: carseg crf failed: " + r.stderr.decode(errors="replace"))
    return np.load(lp).astype(np.int64), np.load(qp)


def postprocess(masks, img, refer, bg_factor, crf, binary, work, dump, prefix, extras):
    """CaR's PostProcess: binary refined masks (n, H, W) or None (crf none)."""
    feats = crf_features(img)
    n = masks.shape[0]
    if extras:
        np.save(os.path.join(dump, prefix + "crf_image_u8.npy"), feats)
    if not refer:
        bg = np.power(1 - np.max(masks, axis=0, keepdims=True), bg_factor)
        probs = np.concatenate([bg, masks], 0).astype(np.float32)
        if extras or crf == "none":
            np.save(os.path.join(dump, prefix + "crf_probs_in.npy"), probs)
        r = run_crf(crf, binary, feats, probs, work)
        if r is None:
            return None
        lab, q = r
        if extras:
            np.save(os.path.join(dump, prefix + "crf_q.npy"), q)
        return np.stack([(lab == c + 1) for c in range(n)], 0).astype(np.float32)
    out = []
    for j in range(n):
        probs = np.stack([1 - masks[j], masks[j]], 0).astype(np.float32)
        if extras or crf == "none":
            np.save(os.path.join(dump, "%scrf_probs_in_%d.npy" % (prefix, j)), probs)
        r = run_crf(crf, binary, feats, probs, work)
        if r is None:
            return None
        out.append((r[0] == 1).astype(np.float32))
    return np.stack(out, 0)


def scatter(N, H, W, refined, scores, idx, names, text, q17_fixed):
    """out_masks / out_scores in input order. Reference: init_clip_text.index(q) (Q17)."""
    om = np.zeros((N, H, W), np.float32)
    osc = np.zeros(N, np.float32)
    tpl = [TPL.format(q) for q in text]
    for j in range(len(idx)):
        i = idx[j] if q17_fixed else tpl.index(names[j])
        om[i] = refined[j]
        osc[i] = scores[j]
    return om, osc


def assign(label, masks, scores, ids):
    """§4.2: ascending score, score > 0, mask > 0.5 → id + 1 (later = higher overwrites)."""
    order = np.argsort(scores, kind="stable")
    for i in order:
        if scores[i] > 0:
            label[masks[i] > 0.5] = ids[i] + 1
    return label


def merge_masks_simple(all_masks, scores, threshold=0.5):
    import torch
    am = torch.from_numpy(all_masks)
    sc = torch.from_numpy(scores)
    merged = torch.sum(am * sc[:, None, None], dim=0)
    merged /= torch.sum(sc)
    merged = merged.numpy()
    H, W = merged.shape
    merged = np.where(merged >= threshold, 1, 0).astype(np.uint8)
    if np.sum(merged) <= 0.05 * (H * W):
        merged = torch.any(am > 0, dim=0).numpy().astype(np.uint8)
        merged = (merged > threshold).astype(np.uint8)
    return merged


def save_palette_png(path, label):
    from PIL import Image
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    im.putpalette(pal)
    im.save(path)


# ------------------------------------------------------------------------------------------------

def find_carseg():
    """$CARSEG_BIN or build/carseg, if it has the `crf` subcommand."""
    for c in (os.environ.get("CARSEG_BIN"), os.path.join(HERE, "..", "build", "carseg")):
        if c and os.access(c, os.X_OK) and subprocess.run(
                [c, "crf", "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return c
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description="CaR reference oracle (see the module docstring)")
    ap.add_argument("image")
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes")
    ap.add_argument("--voc", action="store_true")
    ap.add_argument("--refer")
    ap.add_argument("--generator", default="/work/shared/fixtures/clip_sg/model_f16.safetensors")
    ap.add_argument("--classifier", default="/work/shared/fixtures/models/sc_f16.safetensors")
    ap.add_argument("--vocab", default="/work/shared/clip/bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--eta", type=float)
    ap.add_argument("--theta", type=float)
    ap.add_argument("--lambda", dest="lam", type=float)
    ap.add_argument("--prompts")
    ap.add_argument("--templates", choices=["default", "single"])
    ap.add_argument("--bg")
    ap.add_argument("--bg-factor", type=float, default=1.0)
    ap.add_argument("--stuff")
    ap.add_argument("--stuff-prompts", default="gray,blur")
    ap.add_argument("--stuff-bg-factor", type=float, default=1.0)
    ap.add_argument("--crf", choices=["carseg", "none"], default=None)
    ap.add_argument("--carseg")
    ap.add_argument("--resize")
    ap.add_argument("--crop")
    ap.add_argument("--fill", help="R,G,B: replace the (cropped, resized) image by this colour")
    ap.add_argument("--fixture-extras", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch
    from PIL import Image
    import clip_tokenizer_oracle
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    refer = a.refer is not None
    if refer:
        text = a.refer.split("|")
    elif a.voc or not a.classes:
        text = list(VOC)
    else:
        text = a.classes.split("|")
    # defaults: voc.yaml (semantic), refcoco+.yaml-like (refer)
    eta = a.eta if a.eta is not None else (0.2 if refer else 0.4)
    theta = a.theta if a.theta is not None else (0.1 if refer else 0.6)
    lam = a.lam if a.lam is not None else (0.5 if refer else 0.4)
    prompts = (a.prompts or "circle,blur").split(",")
    prompts = [p for p in prompts if p]
    for p in prompts + a.stuff_prompts.split(","):
        if p not in PROMPT_ORDER:
            sys.exit("car_oracle: unknown prompt type %r" % p)
    tmode = a.templates or ("single" if refer else "default")
    templates = None if tmode == "single" else TEMPLATES
    bg_words = a.bg.split("|") if a.bg else list(BG)
    crf = a.crf or ("carseg" if (a.carseg or find_carseg()) else "none")
    binary = a.carseg or find_carseg()
    if crf == "carseg" and not binary:
        sys.exit("car_oracle: --crf carseg needs the carseg binary (--carseg or $CARSEG_BIN)")

    pil = Image.open(a.image).convert("RGB")
    if a.crop:
        x, y, w, h = [int(v) for v in a.crop.split(",")]
        pil = pil.crop((x, y, x + w, y + h))
    if a.resize:
        w, h = [int(v) for v in a.resize.lower().split("x")]
        pil = pil.resize((w, h), Image.BICUBIC)
    if a.fill:
        pil = Image.new("RGB", pil.size, tuple(int(v) for v in a.fill.split(",")))
    pil.save(os.path.join(a.out, "input.png"))
    pil = Image.open(os.path.join(a.out, "input.png")).convert("RGB")
    img = np.asarray(pil)
    H, W = img.shape[:2]

    tok = clip_tokenizer_oracle.Oracle(a.vocab)
    gm = load_clip(a.generator)
    cm = gm if os.path.abspath(a.classifier) == os.path.abspath(a.generator) else load_clip(a.classifier)
    gen = Generator(gm, Text(gm, tok))
    cls = Classifier(cm, Text(cm, tok) if cm is not gm else gen.text)
    work = tempfile.mkdtemp(prefix="car_oracle_")
    summary = {"queries": text, "eta": eta, "theta": theta, "lambda": lam, "prompts": prompts,
               "templates": tmode, "bg": bg_words, "crf": crf, "mode": "refer" if refer else "semantic",
               "image_hw": [H, W], "generator_logit_scale": gen.scale, "classifier_logit_scale": cls.scale}
    try:
        N = len(text)
        if a.stuff is not None:
            stuff_ids = [int(v) for v in a.stuff.split(",") if v != ""]
            thing_ids = [i for i in range(N) if i not in stuff_ids]
            label = np.zeros((H, W), np.int64)
            passes = []
            for name, ids, bgw, pr, bgfac in (
                    ("stuff", stuff_ids, [text[i] for i in thing_ids], a.stuff_prompts.split(","),
                     a.stuff_bg_factor),
                    ("things", thing_ids, bg_words, prompts, a.bg_factor)):
                passes.append((name, ids, bgw, [p for p in pr if p], bgfac))
            res = {}
            for name, ids, bgw, pr, bgfac in passes[::-1]:      # things run first, as in the code
                sub = [text[i] for i in ids]
                masks, sc, idx, names, rounds = car_forward(gen, cls, pil, sub, bgw, eta, theta, lam, pr,
                                                            templates, False, a.out, name + "_",
                                                            a.fixture_extras)
                ref = postprocess(masks, img, False, bgfac, crf, binary, work, a.out, name + "_",
                                  a.fixture_extras)
                res[name] = (ids, sub, masks, sc, idx, names, ref, len(rounds))
            summary["rounds"] = {k: v[7] for k, v in res.items()}
            if crf != "none":
                fm = np.zeros((N, H, W), np.float32)
                fs = np.zeros(N, np.float32)
                for name in ("stuff", "things"):             # stuff painted first, things over it
                    ids, sub, masks, sc, idx, names, ref, _ = res[name]
                    om, osc = scatter(len(sub), H, W, ref, sc, idx, names, sub, False)
                    for j, gid in enumerate(ids):
                        fm[gid], fs[gid] = om[j], osc[j]
                    assign(label, om, osc, ids)
                np.save(os.path.join(a.out, "final_masks.npy"), fm)
                np.save(os.path.join(a.out, "final_scores.npy"), fs)
                save_palette_png(os.path.join(a.out, "labels.png"), label)
        else:
            masks, sc, idx, names, rounds = car_forward(gen, cls, pil, text, bg_words, eta, theta, lam,
                                                        prompts, templates, refer, a.out, "",
                                                        a.fixture_extras)
            summary["rounds"] = len(rounds)
            summary["survivor_idx"] = idx
            ref = postprocess(masks, img, refer, a.bg_factor, crf, binary, work, a.out, "",
                              a.fixture_extras)
            if ref is not None:
                om, osc = scatter(N, H, W, ref, sc, idx, names, text, False)
                np.save(os.path.join(a.out, "final_masks.npy"), om)
                np.save(os.path.join(a.out, "final_scores.npy"), osc)
                if refer:
                    merged = merge_masks_simple(om, osc)
                    np.save(os.path.join(a.out, "refer_merged.npy"), merged)
                    save_palette_png(os.path.join(a.out, "labels.png"), merged)
                else:
                    lab = assign(np.zeros((H, W), np.int64), om, osc, list(range(N)))
                    save_palette_png(os.path.join(a.out, "labels.png"), lab)
                    om2, osc2 = scatter(N, H, W, ref, sc, idx, names, text, True)
                    lab2 = assign(np.zeros((H, W), np.int64), om2, osc2, list(range(N)))
                    save_palette_png(os.path.join(a.out, "labels_q17fixed.png"), lab2)
                    summary["q17_collision"] = len(set(text)) != len(text)
                    if summary["q17_collision"]:
                        # Identical names give CAMs that differ only by float32 ulps (autograd
                        # summation order depends on the target index); two near-identical CRF
                        # channels then break their tie arbitrarily. With EXACT ties (a port that
                        # computes identical CAMs) the first channel takes the union and the later
                        # duplicate is empty, so the reference's index() collision erases the class.
                        ref3 = ref.copy()
                        for j in range(len(names)):
                            first = names.index(names[j])
                            if first != j:
                                ref3[first] = np.maximum(ref3[first], ref3[j])
                                ref3[j] = 0
                        om3, osc3 = scatter(N, H, W, ref3, sc, idx, names, text, False)
                        lab3 = assign(np.zeros((H, W), np.int64), om3, osc3, list(range(N)))
                        save_palette_png(os.path.join(a.out, "labels_q17tie.png"), lab3)
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
