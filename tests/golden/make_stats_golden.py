#!/usr/bin/python3
"""make_stats_golden.py: outside reference results for operators/stats.c.

Writes, into tests/golden/stats/ (next to this script):
  x.npy           (4000, 12) float32: heavy-tailed (Student t, 5 dof, and one
                  Laplace column), correlated through a fixed random mixing,
                  with column offsets up to 1e3 so centring matters
  mean.npy        (12,) float64  x.mean(0)
  var.npy         (12,) float64  x.var(0)                 (population, ddof 0)
  skew.npy        (12,) float64  scipy.stats.skew(x)      (bias=True)
  kurtosis.npy    (12,) float64  scipy.stats.kurtosis(x)  (Fisher: excess, bias=True)
  cov.npy         (12, 12) float64 np.cov(x, rowvar=False, ddof=0)
  eigenvalues.npy (12,) float64  np.linalg.eigh(cov), descending
  components.npy  (12, 12) float64 eigenvectors as rows, descending, each row's
                  largest-|.| entry made positive (the sign rule of dm_pca_fit)

Everything is computed in float64 from the float32 data exactly as stored, so
the C kernels and numpy see the same numbers and differ only by rounding order.
Deterministic (fixed seed); about 200 KB in all. Run from anywhere:
    /usr/bin/python3 tests/golden/make_stats_golden.py
"""
import os

import numpy as np
import scipy.stats

N, D = 4000, 12
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "stats")


def main():
    rng = np.random.default_rng(20240611)
    sources = rng.standard_t(5, size=(N, D))
    sources[:, 3] = rng.laplace(size=N)
    mixing = rng.normal(size=(D, D)) / np.sqrt(D) + np.eye(D)
    scales = np.linspace(0.5, 3.0, D)
    offsets = np.zeros(D)
    offsets[0], offsets[5], offsets[9] = 1000.0, -250.0, 7.5
    x = ((sources @ mixing.T) * scales + offsets).astype(np.float32)

    xd = x.astype(np.float64)
    cov = np.cov(xd, rowvar=False, ddof=0)
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    w, comps = w[order], v[:, order].T.copy()
    for row in comps:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1.0

    os.makedirs(OUT, exist_ok=True)
    arrays = {
        "x": x,
        "mean": xd.mean(axis=0),
        "var": xd.var(axis=0),
        "skew": scipy.stats.skew(xd, axis=0, bias=True),
        "kurtosis": scipy.stats.kurtosis(xd, axis=0, fisher=True, bias=True),
        "cov": cov,
        "eigenvalues": w,
        "components": comps,
    }
    for name, a in arrays.items():
        np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(a))


if __name__ == "__main__":
    main()
