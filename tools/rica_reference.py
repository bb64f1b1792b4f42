#!/usr/bin/env python3
"""rica_reference.py: float64 numpy reference of Reconstruction ICA's objective
and gradient (Le, Karpenko, Ngiam and Ng, NeurIPS 2011), for the golden files
tests/test_rica.c reads (tests/golden/rica/).

    f(W) = (lambda/N) sum_t sum_j g(w_j . z_t) + (1/N) sum_t ||W^T W z_t - z_t||^2

with W = rownorm(V) and the gradient taken in V. The reconstruction term and its
gradient are computed here row by row from the residuals (not from the
covariance as operators/kernels/rica.c does), so the golden checks that
algebra too.

Writes (all small):
  z.npy            (300, 6) float32   Laplace rows, roughly whitened
  v.npy            (10, 6) float64    the point, rows of unequal norms
  w_init.npy       (10, 6) float64    rownorm(RandomState(7).normal(size=(10, 6)))
  logcosh.npy      (3 + 60,) float64  [f, sparsity, recon, gV (10 x 6)] at lambda 0.5
  sqrt.npy         (3 + 60,) float64  the same with g = sqrt(u^2 + 0.01)

Run: python3 tools/rica_reference.py [OUT_DIR]   (numpy only)
"""
import os
import sys

import numpy as np

LAMBDA, EPS = 0.5, 0.01


def objective(z, V, g):
    z = z.astype(np.float64)
    N = z.shape[0]
    nrm = np.linalg.norm(V, axis=1, keepdims=True)
    W = V / nrm
    Y = z @ W.T
    if g == "logcosh":
        a = np.abs(Y)
        G = a + np.log1p(np.exp(-2 * a)) - np.log(2.0)
        gp = np.tanh(Y)
    else:
        G = np.sqrt(Y * Y + EPS)
        gp = Y / G
    sparsity = LAMBDA * G.sum() / N
    R = Y @ W - z  # W^T W z - z, row by row
    recon = (R * R).sum() / N
    # d/dW of sum ||W^T W z - z||^2 = 2 (W z r^T + W r z^T), summed over rows
    gW = LAMBDA * gp.T @ z / N + 2 * (Y.T @ R + (W @ R.T) @ z) / N
    gV = (gW - (gW * W).sum(1, keepdims=True) * W) / nrm
    return sparsity + recon, sparsity, recon, gV


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "rica")
    os.makedirs(out, exist_ok=True)
    rs = np.random.RandomState(0)
    z = rs.laplace(size=(300, 6)) / np.sqrt(2.0)
    z = z.astype(np.float32)
    V = rs.normal(size=(10, 6)) * rs.uniform(0.5, 2.0, size=(10, 1))
    w0 = np.random.RandomState(7).normal(size=(10, 6))
    w0 /= np.linalg.norm(w0, axis=1, keepdims=True)
    np.save(os.path.join(out, "z.npy"), z)
    np.save(os.path.join(out, "v.npy"), V)
    np.save(os.path.join(out, "w_init.npy"), w0)
    for g in ("logcosh", "sqrt"):
        f, sp, rc, gV = objective(z, V, g)
        np.save(os.path.join(out, g + ".npy"), np.concatenate([[f, sp, rc], gV.ravel()]))
        print(g, "f", f, "sparsity", sp, "recon", rc, "max|gV|", np.abs(gV).max())


if __name__ == "__main__":
    main()
