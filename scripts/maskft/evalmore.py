"""LFW fold-1 unmasked: does the student keep faceplugin's unmasked templates? Seed clips: masked frames vs owners."""
import argparse, csv, os
import cv2, numpy as np, torch
from onnxnet import OnnxNet
from evalfold import embed, tar_at, auc

ap = argparse.ArgumentParser()
ap.add_argument("--base", required=True); ap.add_argument("--student", required=True)
ap.add_argument("--lfw", required=True); ap.add_argument("--seed", required=True)
ap.add_argument("--mean", type=float, default=127.0); ap.add_argument("--scale", type=float, default=1 / 128)
a = ap.parse_args()
torch.set_num_threads(2)
base, st = OnnxNet(a.base).eval(), OnnxNet(a.student).eval()
rows = [r for r in csv.DictReader(open(os.path.join(a.lfw, "index.csv"))) if r["fold"] == "1"]
imgs = [cv2.imread(os.path.join(a.lfw, r["file"])).astype(np.float32) for r in rows]
ids = np.array([r["identity"] for r in rows])
B, S = embed(base, imgs, a), embed(st, imgs, a)
c = (B * S).sum(1).numpy()
print(f"lfw fold 1: {len(rows)} crops; cos(student, base) median {np.median(c):.3f} p5 {np.percentile(c, 5):.3f} min {c.min():.3f}")
iu = np.triu_indices(len(rows), 1); same = ids[iu[0]] == ids[iu[1]]
for name, H in (("base", B), ("student", S)):
    s = (H @ H.T).numpy()[iu]
    print(f"  {name} all: UU TAR@1e-3 {tar_at(s[same], s[~same], 1e-3):.4f} AUC {auc(s[same], s[~same]):.4f}")
rows = list(csv.DictReader(open(os.path.join(a.seed, "index.csv"))))
imgs = [cv2.imread(os.path.join(a.seed, r["file"])).astype(np.float32) for r in rows]
ids = np.array([r["identity"] for r in rows]); m = np.array([r["masked"] == "true" for r in rows])
B, S = embed(base, imgs, a), embed(st, imgs, a)
for name, H in (("base", B), ("student for masked", torch.where(torch.from_numpy(m)[:, None], S, B))):
    X = (H @ H.T).numpy()
    mu = X[np.ix_(m, ~m)]
    own = ids[m][:, None] == ids[~m][None, :]
    nn = mu.argmax(1)
    print(f"seed {name}: masked nearest owner {(ids[~m][nn] == ids[m]).mean():.3f}; MU genuine min {mu[own].min():.3f} median {np.median(mu[own]):.3f}; impostor max {mu[~own].max():.3f}")
