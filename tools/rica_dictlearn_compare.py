#!/usr/bin/env python3
"""rica_dictlearn_compare.py: the planted overcomplete problem of
tests/cli/test_rica.sh (40 Laplace atoms mixed into 24 dimensions, N = 20000,
whitened), solved by dmica's rica and fastica operators and by scikit-learn's
MiniBatchDictionaryLearning (a sparse-coding baseline, here only, never in the
engine), counting the atoms each recovers at |cos| > 0.9. Also the same with
sparser sources (Bernoulli-Gaussian, active 5% of the time), where RICA's
analysis-sparsity model helps less. docs/rica.md records its output.

Run: python3 tools/rica_dictlearn_compare.py [bin/dmica]   (numpy, scikit-learn)
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from sklearn.decomposition import MiniBatchDictionaryLearning

warnings.simplefilter("ignore")
DMICA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "bin", "dmica")


def planted(kind, seed=0, N=20000, k=24, K=40):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((k, K))
    A /= np.linalg.norm(A, axis=0)
    if kind == "laplace":
        S = rng.laplace(size=(N, K))
    else:  # Bernoulli-Gaussian, active 5% of the time
        S = rng.standard_normal((N, K)) * (rng.random((N, K)) < 0.05)
    X = S @ A.T
    X -= X.mean(0)
    lam, V = np.linalg.eigh(X.T @ X / N)
    Wh = (V / np.sqrt(lam)).T
    At = Wh @ A
    At /= np.linalg.norm(At, axis=0)
    return (X @ Wh.T).astype(np.float32), At.T


def recovered(At, W):
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return int((np.abs(At @ W.T).max(1) > 0.9).sum())


def dmica(z, At):
    with tempfile.TemporaryDirectory() as d:
        np.save(d + "/z.npy", z)
        with open(d + "/p.yaml", "w") as f:
            f.write("name: cmp\nnodes:\n  z: {op: npy, params: {path: z.npy}}\n"
                    "  rica: {op: rica, inputs: {z: z}, params: {K: 40, seeds: 1, memory: 1G}}\n"
                    "  ica: {op: fastica, inputs: {z: z}, params: {seeds: 1, memory: 1G}}\n")
        t = time.time()
        subprocess.run([os.path.abspath(DMICA), "run", "p.yaml", "--cache", "c", "--out", "o", "--quiet"], cwd=d,
                       check=True)
        el = time.time() - t
        out = {}
        for node, prod in (("rica", "rica.json"), ("ica", "ica.json")):
            entry = [e for e in os.listdir(d + "/c") if os.path.exists(f"{d}/c/{e}/{prod}")][0]
            out[node] = recovered(At, np.load(f"{d}/c/{entry}/unmixing.npy"))
        j = json.load(open(d + "/o/rica.json"))
        return out["rica"], out["ica"], j["seeds"][0]["iterations"], el


def main():
    for kind in ("laplace", "bernoulli-gaussian-5%"):
        z, At = planted(kind)
        r, f, it, el = dmica(z, At)
        print(f"{kind}: dmica rica K=40: {r}/40 ({it} iterations); dmica fastica k=24: {f}/40 (both {el:.1f} s)")
        for alpha in (0.1, 0.3, 1.0):
            t = time.time()
            dl = MiniBatchDictionaryLearning(n_components=40, alpha=alpha, batch_size=256, max_iter=20,
                                             random_state=0).fit(z)
            print(f"{kind}: MiniBatchDictionaryLearning(40, alpha={alpha}): {recovered(At, dl.components_)}/40 "
                  f"({time.time() - t:.1f} s)")


if __name__ == "__main__":
    main()
