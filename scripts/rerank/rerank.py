"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) of cached templates.

Experiment: TestZZDump (models/eval) writes each evaluation cache as CSV
(path, identity, masked, predicted mask, template); this script compares
TAR at FAR per ground-truth pair type with cosine distances and with the
re-ranked distances (Jaccard distance of k-reciprocal neighbour sets,
mixed with the cosine distance by lambda).

    ZZ_CACHE=build/evalcache ZZ_OUT=/tmp/emb go test -tags matprofile -run TestZZDump ./models/eval/
    python3 scripts/rerank/rerank.py /tmp/emb/KEY.csv
"""
import sys
import time

import numpy as np
import scipy.sparse as sp


def load(path):
    ids, masked, x = [], [], []
    for line in open(path):
        f = line.rstrip("\n").split(",")
        ids.append(f[1])
        masked.append(int(f[2]))
        x.append([float(v) for v in f[4:]])
    x = np.array(x, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.array(ids), np.array(masked), x


def tar_at_far(genuine, impostor, far):
    impostor = np.sort(impostor)
    k = int(np.floor(far * len(impostor)))
    t = impostor[k - 1] if k > 0 else impostor[0] - 1e-9
    return (genuine <= t).mean()


def report(tag, d, ids, masked):
    iu = np.triu_indices(len(ids), 1)
    dist = d[iu]
    same = (ids[:, None] == ids[None, :])[iu]
    mi, mj = masked[iu[0]], masked[iu[1]]
    out = tag
    for name, sel in [("ALL", np.ones_like(same)), ("UU", (mi == 0) & (mj == 0)),
                      ("MM", (mi == 1) & (mj == 1)), ("MU", mi != mj)]:
        g, im = dist[sel & same], dist[sel & ~same]
        if len(g) == 0:
            continue
        out += f"  {name} TAR@1e-2 {tar_at_far(g, im, 1e-2):.3f} TAR@1e-3 {tar_at_far(g, im, 1e-3):.3f}"
    print(out)


def rerank(d, k1, k2, lam):
    n = d.shape[0]
    d = d / np.max(d, axis=0)
    rank = np.argpartition(d, k1 + 1, axis=1)[:, :k1 + 2]
    rank = np.take_along_axis(rank, np.argsort(np.take_along_axis(d, rank, 1), axis=1), 1)
    half = int(np.around(k1 / 2))
    rows, cols, vals = [], [], []
    for i in range(n):
        fwd = rank[i, :k1 + 1]
        recip = fwd[np.any(rank[fwd, :k1 + 1] == i, axis=1)]
        exp = recip
        for c in recip:
            cf = rank[c, :half + 1]
            cr = cf[np.any(rank[cf, :half + 1] == c, axis=1)]
            if len(np.intersect1d(cr, recip)) > 2 / 3 * len(cr):
                exp = np.append(exp, cr)
        exp = np.unique(exp)
        w = np.exp(-d[i, exp])
        rows += [i] * len(exp)
        cols += list(exp)
        vals += list(w / w.sum())
    v = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    if k2 != 1:
        a = sp.csr_matrix((np.full(n * k2, 1.0 / k2), (np.repeat(np.arange(n), k2), rank[:, :k2].ravel())), shape=(n, n))
        v = (a @ v).tocsr()
    vc = v.tocsc()
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        row = v.getrow(i)
        acc = np.zeros(n)
        for j, x in zip(row.indices, row.data):
            col = vc.getcol(j)
            acc[col.indices] += np.minimum(x, col.data)
        jac[i] = 1 - acc / (2 - acc)
    r = (1 - lam) * jac + lam * d
    return (r + r.T) / 2


def main():
    ids, masked, x = load(sys.argv[1])
    d = (1 - x @ x.T).astype(np.float32)
    np.fill_diagonal(d, 0)
    report("cosine", d, ids, masked)
    for k1, k2, lam in [(20, 6, 0.3), (10, 3, 0.3), (10, 3, 0.7), (10, 3, 0.85)]:
        t = time.time()
        r = rerank(d.copy(), k1, k2, lam)
        report(f"re-ranked k1={k1} k2={k2} lambda={lam} ({time.time() - t:.0f} s)", r, ids, masked)




def bcubed(ids, labels):
    import collections
    cl = collections.defaultdict(list)
    for i, l in enumerate(labels):
        cl[l].append(i)
    per = collections.Counter(ids)
    p = r = 0.0
    for members in cl.values():
        c = collections.Counter(ids[members])
        for m in members:
            p += c[ids[m]] / len(members)
            r += c[ids[m]] / per[ids[m]]
    p /= len(ids)
    r /= len(ids)
    return p, r, 2 * p * r / (p + r)


def cluster_at_precision(tag, d, ids, min_p):
    """Average-linkage HAC with one cut; the highest BCubed F1 among the
    cuts (every 0.005) whose BCubed precision is at least min_p."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    z = linkage(squareform(d, checks=False), method="average")
    best = None
    for cut in np.arange(0.2, 1.2, 0.005):
        p, r, f = bcubed(ids, fcluster(z, cut, criterion="distance"))
        if p >= min_p and (best is None or f > best[3]):
            best = (cut, p, r, f)
    print(f"{tag}: " + ("no cut keeps the precision" if best is None else
          f"cut {best[0]:.3f} BCubed P {best[1]:.3f} R {best[2]:.3f} F1 {best[3]:.3f} (P >= {min_p})"))


def clustering_main():
    ids, masked, x = load(sys.argv[2])
    min_p = float(sys.argv[3])
    d = (1 - x @ x.T).astype(np.float64)
    np.fill_diagonal(d, 0)
    d = np.maximum(d, 0)
    cluster_at_precision("cosine", d, ids, min_p)
    for k1, k2, lam in [(10, 3, 0.3), (10, 3, 0.85)]:
        r = rerank(d.copy(), k1, k2, lam).astype(np.float64)
        np.fill_diagonal(r, 0)
        cluster_at_precision(f"re-ranked k1={k1} k2={k2} lambda={lam}", r, ids, min_p)


if __name__ == "__main__":
    if sys.argv[1] == "cluster":
        clustering_main()  # rerank.py cluster FILE.csv MIN_PRECISION
    else:
        main()
