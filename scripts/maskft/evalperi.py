"""A periocular student (train_peri.py --peri): rmfrd fold --fold and seed clips, raw templates."""
import argparse, csv, os
import cv2, numpy as np, torch
from onnxnet import OnnxNet
from evalfold import embed, tar_at, auc, rows_of
from train import upper

ap = argparse.ArgumentParser()
ap.add_argument("--test", action="append", required=True); ap.add_argument("--fold", type=int, default=1)
ap.add_argument("--base", required=True); ap.add_argument("--student", required=True)
ap.add_argument("--mean", type=float, default=127.0); ap.add_argument("--scale", type=float, default=1 / 128)
a = ap.parse_args()
torch.set_num_threads(2)
base, st = OnnxNet(a.base).eval(), OnnxNet(a.student).eval()
for d in a.test:
    te = rows_of(d, a.fold, True) if "seed" not in d else list(dict(r, path=os.path.join(d, r["file"])) for r in csv.DictReader(open(os.path.join(d, "index.csv"))))
    imgs = [cv2.imread(r["path"]).astype(np.float32) for r in te]
    ids = np.array([r["identity"] for r in te]); m = np.array([r["masked"] == "true" for r in te])
    G = embed(base, imgs, a); Pp = embed(st, [upper(x) for x in imgs], a)
    print(f"== {os.path.basename(d)}: {len(te)} crops, {m.sum()} masked")
    iu = np.triu_indices(len(te), 1); same = ids[iu[0]] == ids[iu[1]]
    kinds = {"uu": ~m[iu[0]] & ~m[iu[1]], "mm": m[iu[0]] & m[iu[1]], "mu": m[iu[0]] != m[iu[1]]}
    GG, PP, PG = (G @ G.T).numpy(), (Pp @ Pp.T).numpy(), (Pp @ G.T).numpy()
    cross = np.where(m[:, None] & ~m[None, :], PG, np.where(~m[:, None] & m[None, :], PG.T, PP))  # masked side periocular, unmasked side full
    for name, S in (("full", GG), ("peri-peri", PP), ("peri-full", cross), ("mean full+peri", (GG + PP) / 2)):
        out = []
        for k, sel in kinds.items():
            s = S[iu]
            if (sel & same).sum() and (sel & ~same).sum():
                out.append(f"{k} AUC {auc(s[sel & same], s[sel & ~same]):.3f} TAR@1e-2 {tar_at(s[sel & same], s[sel & ~same], 1e-2):.3f}")
        nn = S[np.ix_(m, ~m)].argmax(1) if m.any() else []
        out.append(f"nearest {(ids[~m][nn] == ids[m]).mean():.3f}" if m.any() else "")
        print(f"  {name}: " + "; ".join(out))
