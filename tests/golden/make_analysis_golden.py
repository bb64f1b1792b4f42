#!/usr/bin/python3
"""make_analysis_golden.py: outside reference results for the ICA
back-projection, the null directions and the |cos| comparison
(operators/analysis/ica_backproject.c), computed independently in numpy float64.

Writes, into tests/golden/analysis/ (next to this script):
  inputs
    W.npy          (6, 6)   float64 an unmixing matrix (random, well conditioned)
    ev.npy         (10,)    float64 eigenvalues, descending; the last two 0 and
                            negative, as a PCA of a rank-deficient covariance gives
    C.npy          (10, 10) float64 orthonormal eigenvectors as rows
    mean.npy       (10,)    float64
    decoder.npy    (50, 10) float32 decoder rows: random, two close to patterns,
                            one zero
    params.npy     (2,)     int64   [seed, null_samples] of the null directions
  outputs
    directions.npy (6, 10)  float64 columns of C_k^T L^(1/2) A (A = W^-1), unit rows
    filters.npy    (6, 10)  float64 W L^(-1/2) C_k
    unscaled.npy   (6, 10)  float64 A^T C_k, unit rows
    mixing.npy     (10, 6)  float64 C_k^T L^(1/2) A
    offset.npy     (6,)     float64 filters @ mean
    variance.npy   (2,)     float64 [sum_{i<k} l_i / sum l, 1 - unscaled error / sum l]
    nulls.npy      (2 ns, 10) float32 ns unit rows then ns covariance rows, from
                            numpy's legacy RandomState(seed).standard_normal
    maxcos.npy     (6 + 2 ns,) float64 max |x . u| over the unit decoder rows u
    best.npy       (6 + 2 ns,) int64   the decoder row reaching it

Run from anywhere: /usr/bin/python3 tests/golden/make_analysis_golden.py
"""
import os

import numpy as np

K, D, NSAE, SEED, NS = 6, 10, 50, 7, 40
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "analysis")


def unit_rows(x):
    n = np.sqrt((x * x).sum(1, keepdims=True))
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0)


def main():
    rng = np.random.default_rng(20240612)
    W = rng.normal(size=(K, K)) + 2 * np.eye(K)
    ev = np.concatenate([np.sort(rng.uniform(0.3, 9.0, size=D - 2))[::-1], [0.0, -1e-9]])
    C, _ = np.linalg.qr(rng.normal(size=(D, D)))
    C = C.T.copy()
    mean = rng.normal(size=D)

    A = np.linalg.inv(W)
    Ck, lk = C[:K], ev[:K]
    mixing = Ck.T @ np.diag(np.sqrt(lk)) @ A
    directions = unit_rows(mixing.T)
    filters = W @ np.diag(1 / np.sqrt(lk)) @ Ck
    unscaled = unit_rows(A.T @ Ck)
    offset = filters @ mean
    lpos = np.maximum(ev, 0)
    err = np.sum(lk * (1 - 1 / np.sqrt(lk)) ** 2) + lpos[K:].sum()
    variance = np.array([lk.sum() / lpos.sum(), 1 - err / lpos.sum()])

    dec = rng.normal(size=(NSAE, D))
    dec[3] = 2.5 * directions[1] + 0.05 * rng.normal(size=D)
    dec[17] = -0.7 * directions[4] + 0.02 * rng.normal(size=D)
    dec[30] = 0
    dec = dec.astype(np.float32)

    rs = np.random.RandomState(SEED)
    unit = [unit_rows(rs.standard_normal(D)[None])[0] for _ in range(NS)]
    cov = []
    for _ in range(NS):
        g = rs.standard_normal(D)
        cov.append(unit_rows(((g * np.sqrt(lpos))[:, None] * C).sum(0)[None])[0])
    nulls = np.array(unit + cov).astype(np.float32)

    X = np.concatenate([directions.astype(np.float32), nulls]).astype(np.float64)
    u = unit_rows(dec.astype(np.float64))
    cos = np.abs(X @ u.T)
    maxcos, best = cos.max(1), cos.argmax(1).astype(np.int64)

    os.makedirs(OUT, exist_ok=True)
    for name, a in [("W", W), ("ev", ev), ("C", C), ("mean", mean), ("decoder", dec),
                    ("params", np.array([SEED, NS], dtype=np.int64)), ("directions", directions),
                    ("filters", filters), ("unscaled", unscaled), ("mixing", mixing), ("offset", offset),
                    ("variance", variance), ("nulls", nulls), ("maxcos", maxcos), ("best", best)]:
        np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(a))


if __name__ == "__main__":
    main()
