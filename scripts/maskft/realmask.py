"""Real mask textures cut from masked aligned crops (GrabCut), transplanted onto unmasked aligned crops."""
import csv, os
import cv2
import numpy as np

PAD = 128  # padding grey of the aligned crops


def segment(im):
    """im: 112x112x3 uint8 aligned masked crop -> float alpha of the mask (0..1) or None."""
    h, w = im.shape[:2]
    gm = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    gm[:40] = cv2.GC_BGD
    yy, xx = np.mgrid[0:h, 0:w]
    ell = ((xx - 56) / 44.0) ** 2 + ((yy - 88) / 30.0) ** 2 < 1
    gm[ell & (yy > 62)] = cv2.GC_PR_FGD
    gm[(xx > 40) & (xx < 72) & (yy > 80) & (yy < 100)] = cv2.GC_FGD
    pad = np.all(np.abs(im.astype(int) - PAD) <= 1, axis=2)
    gm[pad] = cv2.GC_BGD
    bg, fg = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(im, gm, None, bg, fg, 5, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    m = ((gm == cv2.GC_FGD) | (gm == cv2.GC_PR_FGD)).astype(np.uint8)
    m[:45] = 0
    n, lab, st, _ = cv2.connectedComponentsWithStats(m)
    if n < 2:
        return None
    k = 1 + int(np.argmax(st[1:, cv2.CC_STAT_AREA]))
    m = (lab == k).astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    area = m.sum()
    if area < 0.12 * h * w or area > 0.55 * h * w:
        return None
    a = cv2.GaussianBlur(m.astype(np.float32), (5, 5), 0)
    return a


def load_masks(crop_dirs, folds):
    out = []
    for d in crop_dirs:
        with open(os.path.join(d, "index.csv"), newline="") as f:
            for r in csv.DictReader(f):
                if r["masked"] == "true" and int(r["fold"]) in folds:
                    im = cv2.imread(os.path.join(d, r["file"]))
                    a = segment(im)
                    if a is not None:
                        out.append((im.astype(np.float32), a))
    return out


def skin_level(im):
    return im[44:56, 30:82].reshape(-1, 3).mean(0)


def transplant(target, masks, rng):
    """target: 112x112x3 float32 unmasked crop; masks: list from load_masks."""
    src, a = masks[rng.randrange(len(masks))]
    if rng.random() < 0.5:
        src, a = src[:, ::-1], a[:, ::-1]
    M = cv2.getRotationMatrix2D((56, 80), rng.uniform(-5, 5), rng.uniform(0.94, 1.06))
    M[:, 2] += (rng.uniform(-3, 3), rng.uniform(-4, 4))
    src = cv2.warpAffine(np.ascontiguousarray(src), M, (112, 112), borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(np.ascontiguousarray(a), M, (112, 112))
    gain = (skin_level(target) + 1) / (skin_level(src) + 1)
    t = rng.uniform(0.3, 1.0)
    src = src * (1 + t * (np.clip(gain.mean(), 0.5, 2.0) - 1))
    return target * (1 - a[..., None]) + np.clip(src, 0, 255) * a[..., None]
