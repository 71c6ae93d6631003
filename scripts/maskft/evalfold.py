"""Raw-template figures of a fine-tuned masked model on one identity fold of
dumped crops (docs/accuracy.md, "Masked faces: a fine-tuned net").

For the crops of --fold in --test (an `atm-tools eval crops --dump` folder),
masked crops are embedded by --student and unmasked ones by --base (as the
pipeline does), or all by --base alone, and it prints, per pair type, AUC and
TAR at FAR 1e-2, the share of masked crops whose nearest unmasked crop is
the same person, and MU figures after symmetric score normalisation (s-norm)
against a cohort of other identities: --cohort folders' crops of the other
fold (unmasked ones embedded by --base, masked ones and painted copies of
unmasked ones by the student).
"""
import argparse
import csv
import math
import os
import random

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from onnxnet import OnnxNet
from train import paint, tensor


def rows_of(d, fold, same):
    with open(os.path.join(d, "index.csv"), newline="") as f:
        return [dict(r, path=os.path.join(d, r["file"])) for r in csv.DictReader(f) if (int(r["fold"]) == fold) == same]


def embed(net, imgs, a):
    with torch.no_grad():
        return torch.cat([F.normalize(net(tensor(imgs[i:i + 64], a.mean, a.scale)), dim=1) for i in range(0, len(imgs), 64)])


def tar_at(gen, imp, far):
    imp = np.sort(imp)[::-1]
    return float((gen > imp[max(int(far * len(imp)), 1) - 1]).mean())


def auc(gen, imp):
    r = np.concatenate([gen, imp]).argsort().argsort() + 1
    return float((r[:len(gen)].sum() - len(gen) * (len(gen) + 1) / 2) / (len(gen) * len(imp)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--test", required=True)
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--base", required=True)
    ap.add_argument("--student", default="", help="the fine-tuned ONNX file (empty: the base alone)")
    ap.add_argument("--cohort", action="append", default=[], help="dumped crops whose other fold is the s-norm cohort (repeatable)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--mean", type=float, default=127.0)
    ap.add_argument("--scale", type=float, default=1 / 128)
    a = ap.parse_args()
    torch.set_num_threads(2)
    te = rows_of(a.test, a.fold, True)
    imgs = [cv2.imread(r["path"]).astype(np.float32) for r in te]
    ids = np.array([r["identity"] for r in te])
    m = np.array([r["masked"] == "true" for r in te])
    base = OnnxNet(a.base).eval()
    student = OnnxNet(a.student).eval() if a.student else base
    H = torch.where(torch.from_numpy(m)[:, None], embed(student, imgs, a), embed(base, imgs, a))
    S = (H @ H.T).numpy()
    iu = np.triu_indices(len(te), 1)
    same = ids[iu[0]] == ids[iu[1]]
    kinds = {"uu": ~m[iu[0]] & ~m[iu[1]], "mm": m[iu[0]] & m[iu[1]], "mu": m[iu[0]] != m[iu[1]]}
    for k, sel in kinds.items():
        s = S[iu]
        print(f"{k}: AUC {auc(s[sel & same], s[sel & ~same]):.3f} TAR@1e-2 {tar_at(s[sel & same], s[sel & ~same], 1e-2):.3f}")
    nn = S[np.ix_(m, ~m)].argmax(1)
    print(f"masked nearest its owner: {(ids[~m][nn] == ids[m]).mean():.3f}")
    if a.cohort:
        cu, cm = [], []
        for d in a.cohort:
            for r in rows_of(d, a.fold, False):
                (cm if r["masked"] == "true" else cu).append(cv2.imread(r["path"]).astype(np.float32))
        rng = random.Random(5)
        cu = cu[:1500]
        painted = [paint(x, rng) for x in cu[:600]]
        C = torch.cat([embed(base, cu, a), embed(student, cm, a), embed(student, painted, a)])
        top = (H @ C.T).topk(a.k, dim=1).values
        mu, sd = top.mean(1), top.std(1)
        Z = (((torch.from_numpy(S) - mu[:, None]) / sd[:, None] + (torch.from_numpy(S) - mu[None, :]) / sd[None, :]) / 2).numpy()[iu]
        sel = kinds["mu"]
        print(f"mu, s-norm K {a.k}: AUC {auc(Z[sel & same], Z[sel & ~same]):.3f} TAR@1e-2 {tar_at(Z[sel & same], Z[sel & ~same], 1e-2):.3f}")


if __name__ == "__main__":
    main()
