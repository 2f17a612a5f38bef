#!/usr/bin/python3
"""Reference vectors for src/car/prompts.c from OpenCV 4.6 + scipy (run by tests/test_prompts.c).

usage: gen_prompt_vectors.py OUTDIR [IMAGE.png]
Writes:
  ellipse_params.npy (n, 6) int32: w h cx cy ax ay;  ellipse_px.npy (n, 64, 64) uint8: drawn mask
    (shapes drawn with colour 1 on a zero canvas, canvases up to 64x64, top-left corner used)
  rect_params.npy (n, 6) int32: w h x0 y0 x1 y1;     rect_px.npy (n, 64, 64) uint8
  contour_masks.npy (n, 48, 48) uint8;                contour_px.npy (n, 48, 48) uint8
  If IMAGE is given: prompt_image.npy (H, W, 3) uint8 and for each prompt combination c and
  mask m the upstream apply_visual_prompts output prompt_<c>.npy (m, H, W, 3), masks in
  prompt_masks.npy (m, H, W) float32, eta 0.4.
"""
import os
import sys

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes


def apply_visual_prompts(image_array, mask, visual_prompt_type):
    # same operations as clip_as_rnn/modeling/model/utils.py apply_visual_prompts
    color, thickness = (255, 0, 0), 1
    out = image_array.copy()
    if 'blur' in visual_prompt_type:
        blurred = cv2.GaussianBlur(out.copy(), (15, 15), 0)
        sharp = cv2.bitwise_and(out.copy(), out.copy(), mask=np.clip(mask, 0, 255).astype(np.uint8))
        inv = 1 - mask
        out = cv2.add(sharp, (blurred * inv[:, :, None]).astype(np.uint8))
    if 'gray' in visual_prompt_type:
        gray = cv2.cvtColor(out.copy(), cv2.COLOR_BGR2GRAY)
        gray = np.stack([gray, gray, gray], axis=-1)
        col = cv2.bitwise_and(out.copy(), out.copy(), mask=np.clip(mask, 0, 255).astype(np.uint8))
        inv = 1 - mask
        out = cv2.add(col, (gray * inv[:, :, None]).astype(np.uint8))
    if 'black' in visual_prompt_type:
        out = cv2.bitwise_and(out.copy(), out.copy(), mask=np.clip(mask, 0, 255).astype(np.uint8))
    if 'circle' in visual_prompt_type or 'rectangle' in visual_prompt_type:
        rows, cols = np.where(mask == 1)
        cy, cx = int(np.mean(rows)), int(np.mean(cols))
        hh = rows.max() - rows.min() + 1
        ww = cols.max() - cols.min() + 1
        if 'circle' in visual_prompt_type:
            out = cv2.ellipse(out, (cx, cy), (ww // 2, hh // 2), 0, 0, 360, color, thickness)
        if 'rectangle' in visual_prompt_type:
            out = cv2.rectangle(out, (cx - ww // 2, cy - hh // 2), (cx + ww // 2, cy + hh // 2),
                                color, thickness)
    if 'contour' in visual_prompt_type:
        m = binary_fill_holes(mask)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        out = cv2.drawContours(out.copy(), contours, -1, color, thickness)
    return out


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    # ellipses: all axis sizes 0..40 (every angular step), centres inside and outside
    ep, epx = [], []
    for i in range(400):
        w, h = int(rng.integers(1, 65)), int(rng.integers(1, 65))
        cx, cy = int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10))
        ax, ay = int(rng.integers(0, 41)), int(rng.integers(0, 41))
        if i < 41:
            w = h = 64; cx = cy = 32; ax = i; ay = (i * 7) % 30
        img = np.zeros((h, w, 3), np.uint8)
        cv2.ellipse(img, (cx, cy), (ax, ay), 0, 0, 360, (1, 0, 0), 1)
        c = np.zeros((64, 64), np.uint8); c[:h, :w] = img[:, :, 0]
        ep.append([w, h, cx, cy, ax, ay]); epx.append(c)
    np.save(os.path.join(out, 'ellipse_params.npy'), np.array(ep, np.int32))
    np.save(os.path.join(out, 'ellipse_px.npy'), np.array(epx, np.uint8))
    rp, rpx = [], []
    for i in range(100):
        w, h = int(rng.integers(1, 65)), int(rng.integers(1, 65))
        x0, y0 = int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10))
        x1, y1 = int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10))
        img = np.zeros((h, w, 3), np.uint8)
        cv2.rectangle(img, (x0, y0), (x1, y1), (1, 0, 0), 1)
        c = np.zeros((64, 64), np.uint8); c[:h, :w] = img[:, :, 0]
        rp.append([w, h, x0, y0, x1, y1]); rpx.append(c)
    np.save(os.path.join(out, 'rect_params.npy'), np.array(rp, np.int32))
    np.save(os.path.join(out, 'rect_px.npy'), np.array(rpx, np.uint8))
    cm, cpx = [], []
    for i in range(60):
        m = (rng.random((48, 48)) < (0.3 + 0.5 * (i % 3) / 2)).astype(np.uint8)
        if i % 2:
            m = cv2.dilate(m, np.ones((3, 3), np.uint8))
        if i % 5 == 0:
            m[:] = 0; cv2.circle(m, (24, 24), 15, 1, -1); cv2.circle(m, (24, 24), 5, 0, -1)
        f = binary_fill_holes(m)
        contours, _ = cv2.findContours(f.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        img = np.zeros((48, 48, 3), np.uint8)
        cv2.drawContours(img, contours, -1, (1, 0, 0), 1)
        cm.append(m); cpx.append(img[:, :, 0])
    np.save(os.path.join(out, 'contour_masks.npy'), np.array(cm, np.uint8))
    np.save(os.path.join(out, 'contour_px.npy'), np.array(cpx, np.uint8))
    if len(sys.argv) > 2:
        from PIL import Image
        im = np.array(Image.open(sys.argv[2]).convert('RGB'))
        H, W = im.shape[:2]
        yy, xx = np.mgrid[0:H, 0:W]
        masks = []
        for k in range(6):
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            sy, sx = rng.uniform(5, H / 2), rng.uniform(5, W / 2)
            g = np.exp(-((yy - cy) ** 2 / (2 * sy * sy) + (xx - cx) ** 2 / (2 * sx * sx)))
            masks.append((g / g.max()).astype(np.float32))
        masks = np.array(masks)
        np.save(os.path.join(out, 'prompt_image.npy'), im)
        np.save(os.path.join(out, 'prompt_masks.npy'), masks)
        combos = ['circle,blur', 'blur,gray', 'gray,blur', 'black,rectangle', 'contour', 'circle']
        for c in combos:
            types = c.split(',')
            res = [apply_visual_prompts(im, (m > 0.4).astype(np.uint8), types) for m in masks]
            np.save(os.path.join(out, 'prompt_%s.npy' % c.replace(',', '_')), np.array(res))


if __name__ == '__main__':
    main()
