"""Fine-tunes the embedder so that a masked face lands where the untouched
embedder puts the same face unmasked (docs/accuracy.md, "Masked faces: a
fine-tuned net").

Self-distillation, no identity labels: the student (a copy of the base ONNX
model) sees an unmasked crop with a randomly painted mask and is pulled to
the teacher's (the base model's) template of the same crop unmasked; it also
sees unmasked crops and is held to the teacher's templates there. The input
is the embedder crops `atm-tools eval crops --dump DIR` writes (index.csv
with a fold column); only identities of --train-folds are used, so the other
fold stays held out.

--real-masks DIR also transplants real masks cut from DIR's masked crops of
the training folds (realmask.py); --peri trains a periocular student that
sees only the band of brows, eyes and nose bridge (upper), masked or not,
and is pulled to the teacher's whole-face template.

Needs Debian's python3-torch, python3-onnx, python3-opencv, python3-numpy.
Writes OUT/student.onnx (same graph as the base, new weights) and
OUT/student.delta (delta.py) for models/heads.
"""
import argparse
import csv
import math
import os
import random
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from delta import write_delta
from onnxnet import OnnxNet
from realmask import load_masks, transplant

PALETTE = [(245, 245, 245), (235, 215, 180), (200, 170, 120), (30, 30, 30), (60, 60, 60), (150, 150, 150),
           (170, 200, 160), (200, 190, 230), (120, 90, 60), (180, 220, 235)]


def paint(im, rng):
    """Paints a random cloth or surgical mask on a 112x112 ArcFace-aligned crop (BGR float)."""
    h, w = im.shape[:2]
    yt = rng.uniform(54, 70)  # top edge, over the nose
    dy = rng.uniform(0, 7)
    xl, xr = rng.uniform(4, 22), rng.uniform(90, 108)
    ys = yt + rng.uniform(0, 10)
    yb = rng.uniform(108, 125)
    pts = np.array([(xl, ys), (xl + rng.uniform(0, 10), yb - 18), (38, yb), (74, yb), (xr - rng.uniform(0, 10), yb - 18),
                    (xr, ys), (74, yt + rng.uniform(0, 4)), (56, yt - dy), (38, yt + rng.uniform(0, 4))], np.float32)
    alpha = np.zeros((h, w), np.float32)
    cv2.fillPoly(alpha, [np.round(pts * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    k = rng.choice([1, 3, 5])
    if k > 1:
        alpha = cv2.GaussianBlur(alpha, (k, k), 0)
    if rng.random() < 0.15:
        col = np.array([rng.uniform(0, 255) for _ in range(3)], np.float32)
    else:
        col = np.array(PALETTE[rng.randrange(len(PALETTE))], np.float32) + np.array([rng.uniform(-20, 20) for _ in range(3)], np.float32)
    tex = np.ones((h, w, 3), np.float32) * col
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1 + rng.uniform(-0.25, 0.1) * (yy - yt) / 50 + rng.uniform(-0.15, 0.15) * (xx - 56) / 56
    tex *= shade[..., None]
    tex += np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(2, 12), (h, w, 1)).astype(np.float32)
    if rng.random() < 0.4:  # pleats
        for y0 in np.arange(yt + rng.uniform(6, 12), 112, rng.uniform(7, 12)):
            cv2.line(tex, (0, int(y0)), (w, int(y0 + rng.uniform(-3, 3))), (col * 0.8).tolist(), 1, cv2.LINE_AA)
    if rng.random() < 0.15:  # a print
        for _ in range(rng.randrange(1, 5)):
            c = (rng.uniform(0, 255), rng.uniform(0, 255), rng.uniform(0, 255))
            cv2.circle(tex, (int(rng.uniform(20, 92)), int(rng.uniform(yt + 8, 108))), int(rng.uniform(2, 8)), c, -1)
    if rng.random() < 0.3:  # ear straps
        a2 = np.zeros_like(alpha)
        for x0, x1 in ((0, int(xl)), (int(xr), w)):
            cv2.line(tex, (x0, int(ys)), (x1, int(ys)), (col * 0.9).tolist(), 2)
            cv2.line(a2, (x0, int(ys)), (x1, int(ys)), 1.0, 2)
        alpha = np.maximum(alpha, a2)
    return im * (1 - alpha[..., None]) + np.clip(tex, 0, 255) * alpha[..., None]


def jitter(im, rng):
    """Alignment error, exposure, blur and grey: what a camera adds."""
    M = cv2.getRotationMatrix2D((56 + rng.uniform(-3, 3), 56 + rng.uniform(-3, 3)), rng.uniform(-6, 6), rng.uniform(0.94, 1.06))
    M[:, 2] += (rng.uniform(-3, 3), rng.uniform(-3, 3))
    out = cv2.warpAffine(im, M, (112, 112), borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.5:
        out = out * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)
    if rng.random() < 0.2:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    if rng.random() < 0.1:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(out, 0, 255).astype(np.float32)


PERI = (20, 66, 4, 108)  # rows y0..y1, cols x0..x1 of the 112 aligned crop: brows, eyes, nose bridge


def upper(im, rng=None):
    """The periocular band of an aligned crop, stretched to the net's 112x112 input."""
    y0, y1, x0, x1 = PERI
    if rng is not None:
        d = rng.uniform(-3, 3)
        y1 = int(round(y1 + d))
    return cv2.resize(im[y0:y1, x0:x1], (112, 112), interpolation=cv2.INTER_LINEAR)


def tensor(batch, mean, scale):
    x = np.stack(batch)
    return torch.from_numpy((x - mean) * scale).permute(0, 3, 1, 2).contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", action="append", required=True, help="a folder written by atm-tools eval crops --dump (repeatable)")
    ap.add_argument("--base", required=True, help="the embedder's ONNX file (build/models/faceplugin-112.onnx)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-folds", default="0", help="identity folds trained on, e.g. 0 or 0,1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--freeze", type=int, default=6, help="graph nodes kept as they are, from the input")
    ap.add_argument("--mean", type=float, default=127.0)
    ap.add_argument("--scale", type=float, default=1 / 128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real-masks", action="append", default=[], help="dumped crops whose masked crops of the training folds give real mask textures")
    ap.add_argument("--peri", action="store_true", help="the student sees only the periocular band (upper), masked or not")
    ap.add_argument("--real-share", type=float, default=0.6, help="share of masked inputs with a transplanted real mask")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = random.Random(a.seed)
    folds = {int(f) for f in a.train_folds.split(",")}
    rows = []
    for d in a.crops:
        with open(os.path.join(d, "index.csv"), newline="") as f:
            for r in csv.DictReader(f):
                if r["masked"] == "false" and int(r["fold"]) in folds:
                    rows.append(os.path.join(d, r["file"]))
    if not rows:
        raise SystemExit("no unmasked crops in the training folds")
    imgs = [cv2.imread(p).astype(np.float32) for p in rows]
    flips = [x[:, ::-1].copy() for x in imgs]
    os.makedirs(a.out, exist_ok=True)
    masks = load_masks(a.real_masks, folds) if a.real_masks else []
    print(f"{len(masks)} real mask textures", flush=True)

    def mask(x):
        if masks and rng.random() < a.real_share:
            return transplant(x, masks, rng)
        return paint(x, rng)

    teacher = OnnxNet(a.base).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    with torch.no_grad():
        def embed(xs):
            return torch.cat([F.normalize(teacher(tensor(xs[i:i + 64], a.mean, a.scale)), dim=1) for i in range(0, len(xs), 64)])
        T, Tf = embed(imgs), embed(flips)
    print(f"{len(rows)} unmasked crops; teacher templates in {time.time() - t0:.0f} s", flush=True)

    student = OnnxNet(a.base)
    for i, (_, ins, _, _) in enumerate(student.nodes):
        for j in ins:
            if j in student.pname:
                student.params[student.pname[j]].requires_grad_(i >= a.freeze)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=a.lr)
    painted, clean = 24, 8
    steps = a.epochs * (len(rows) // painted)
    step = 0
    for ep in range(a.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        tot, nb, t0 = [0.0, 0.0], 0, time.time()
        for b in range(0, len(order) - painted + 1, painted):
            xs, tg = [], []
            for k, j in enumerate(order[b:b + painted] + rng.sample(order, clean)):
                fl = rng.random() < 0.5
                x = flips[j] if fl else imgs[j]
                if a.peri:
                    x = jitter(mask(x) if rng.random() < 0.5 else x, rng)
                    xs.append(upper(x, rng))
                else:
                    xs.append(jitter(mask(x) if k < painted else x, rng))
                tg.append(Tf[j] if fl else T[j])
            for g in opt.param_groups:
                g["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            step += 1
            S = F.normalize(student(tensor(xs, a.mean, a.scale)), dim=1)
            c = 1 - (S * torch.stack(tg)).sum(1)
            lp, lc = c[:painted].mean(), c[painted:].mean()
            loss = lp + lc
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot[0] += lp.item()
            tot[1] += lc.item()
            nb += 1
        print(f"epoch {ep}: painted {tot[0] / nb:.4f} clean {tot[1] / nb:.4f} (1 - cosine to the teacher) {time.time() - t0:.0f} s", flush=True)
    out = os.path.join(a.out, "student.onnx")
    student.save(out)
    write_delta(a.base, out, os.path.join(a.out, "student.delta"))


if __name__ == "__main__":
    main()
