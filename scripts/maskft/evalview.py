"""Masked views with real mask textures: an unmasked face embedded with K transplanted real masks (other fold's),
compared with masked faces. rmfrd fold --fold, raw templates."""
import argparse, csv, os, random
import cv2, numpy as np, torch, torch.nn.functional as F
from onnxnet import OnnxNet
from evalfold import embed, tar_at, auc, rows_of
from realmask import load_masks, transplant

ap = argparse.ArgumentParser()
ap.add_argument("--test", required=True); ap.add_argument("--fold", type=int, default=1)
ap.add_argument("--base", required=True); ap.add_argument("--student", default="")
ap.add_argument("--k", type=int, default=8); ap.add_argument("--masks", required=True)
ap.add_argument("--mean", type=float, default=127.0); ap.add_argument("--scale", type=float, default=1 / 128)
a = ap.parse_args()
torch.set_num_threads(2)
te = rows_of(a.test, a.fold, True)
imgs = [cv2.imread(r["path"]).astype(np.float32) for r in te]
ids = np.array([r["identity"] for r in te]); m = np.array([r["masked"] == "true" for r in te])
base = OnnxNet(a.base).eval(); st = OnnxNet(a.student).eval() if a.student else base
masks = load_masks([a.masks], {1 - a.fold})
print(len(masks), "mask textures from the other fold")
P = embed(st, imgs, a)  # masked probes by the student (or base)
G = embed(base, imgs, a)
U = np.where(~m)[0]; M = np.where(m)[0]
rng = random.Random(7)
views = []
for i in U:
    vs = [transplant(imgs[i], masks, rng) for _ in range(a.k)]
    e = embed(st, vs, a)
    views.append(F.normalize(e.mean(0), dim=0))
V = torch.stack(views)
plain = (P[M] @ G[U].T).numpy(); view = (P[M] @ V.T).numpy()
same = ids[M][:, None] == ids[U][None, :]
for name, s in (("plain", plain), ("view", view), ("max", np.maximum(plain, view)), ("mean", (plain + view) / 2)):
    print(f"MU {name}: AUC {auc(s[same], s[~same]):.3f} TAR@1e-2 {tar_at(s[same], s[~same], 1e-2):.3f} TAR@1e-3 {tar_at(s[same], s[~same], 1e-3):.3f} nearest {(same[np.arange(len(M)), s.argmax(1)]).mean():.3f}")
mm = (P[M] @ P[M].T).numpy(); iu = np.triu_indices(len(M), 1); sm = ids[M][iu[0]] == ids[M][iu[1]]
print(f"MM (reference): AUC {auc(mm[iu][sm], mm[iu][~sm]):.3f} TAR@1e-2 {tar_at(mm[iu][sm], mm[iu][~sm], 1e-2):.3f}")
