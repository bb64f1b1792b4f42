#!/usr/bin/python3
"""make_npz_golden.py: golden files for the .npz reader (tests/test_npz.c) and for Gemma
Scope SAEs in their original release format (tests/test_sae.c), from numpy's own writers
(numpy.savez, numpy.savez_compressed, Python's zipfile) and the independent float64
reference tools/sae_reference.py.

tests/golden/npz/
  stored.npz        numpy.savez: a f32 (2, 3), b f64 (4,), c i4 (2, 2), h f2 (3,), s f32 scalar
  deflated.npz      numpy.savez_compressed, the same arrays
  zip64.npz         the same arrays, stored, with every size and offset in ZIP64 fields and
                    a ZIP64 end record (zipfile made to think 100 bytes is its limit), and
                    a zip comment after the end record
  bzip2.npz         array a, compressed with bzip2 (method 12: refused)
  notes.npz         array a and a member that is not .npy (ignored)
  Array values: a = arange(6).reshape(2, 3) / 4 - 0.5, b = [1e300, -2.5, 0, 7],
  c = [[1, -2], [3, -4]], h = [0.5, -1, 65504], s = 3.25.

tests/golden/sae/gemmascope_npz/    (the parity case, as tests/golden/sae/<case>/ of
                                     make_sae_golden.py)
  params.npz            a random JumpReLU SAE, d_model 64, d_sae 256, as the release
                        writes it: numpy.savez of float32 W_enc (64, 256), W_dec (256, 64),
                        b_enc (256,), b_dec (64,), threshold (256,)
  x.npy, expected_residual.npy, expected_features.npy, expected_stats.json
tests/golden/sae/gemmascope_small/  d_model 8, d_sae 16, for the loader's cases:
  params.npz            stored; params_deflated.npz the same arrays compressed
  missing_threshold.npz, bad_shape.npz (W_dec (8, 16)), short_threshold.npz (15 values),
  bzip2.npz (every member bzip2), int_threshold.npz (threshold i4)

Inputs are kept 1e-3 away from the thresholds (make_sae_golden.py says why). Run from
the repository root: tests/golden/make_npz_golden.py
"""
import io
import json
import os
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
import sae_reference as ref  # noqa: E402
from make_sae_golden import inputs, clear_of_edges  # noqa: E402

NPZ = os.path.join(ROOT, "tests", "golden", "npz")
SAE = os.path.join(ROOT, "tests", "golden", "sae")
N = 200


def arrays():
    return dict(a=(np.arange(6, dtype=np.float32).reshape(2, 3) / 4 - 0.5).astype(np.float32),
                b=np.array([1e300, -2.5, 0, 7], np.float64), c=np.array([[1, -2], [3, -4]], np.int32),
                h=np.array([0.5, -1, 65504], np.float16), s=np.float32(3.25))


def npy_bytes(a):
    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


def zip_members(path, members, compression=zipfile.ZIP_STORED, comment=b""):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
        z.comment = comment


def make_npz_files():
    os.makedirs(NPZ, exist_ok=True)
    a = arrays()
    np.savez(os.path.join(NPZ, "stored.npz"), **a)
    np.savez_compressed(os.path.join(NPZ, "deflated.npz"), **a)
    limit = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 100  # every size and offset above it goes to ZIP64 fields
    try:
        zip_members(os.path.join(NPZ, "zip64.npz"), [(k + ".npy", npy_bytes(v)) for k, v in a.items()],
                    comment=b"a comment after the end record")
    finally:
        zipfile.ZIP64_LIMIT = limit
    zip_members(os.path.join(NPZ, "bzip2.npz"), [("a.npy", npy_bytes(a["a"]))], zipfile.ZIP_BZIP2)
    zip_members(os.path.join(NPZ, "notes.npz"), [("README.txt", b"not an array\n"), ("a.npy", npy_bytes(a["a"]))])
    with zipfile.ZipFile(os.path.join(NPZ, "zip64.npz")) as z:
        assert z.testzip() is None


def random_sae(rng, d, ds, l0):
    """A JumpReLU SAE of the release's layout with about l0 features active per row."""
    W_dec = rng.standard_normal((ds, d))
    W_dec *= 0.25 / np.linalg.norm(W_dec, axis=1, keepdims=True)
    W_enc = 4 * W_dec.T + 0.3 * rng.standard_normal((d, ds)) / np.sqrt(d)
    b_enc = -0.1 * rng.random(ds)
    b_dec = 0.05 * rng.standard_normal(d)
    x = inputs(rng, 4000, d, 1.0)
    pre = x @ W_enc + b_enc
    threshold = np.quantile(pre, 1 - l0 / ds, axis=0)
    threshold[:3] = -0.5  # a few negative thresholds: relu still zeroes pre <= 0
    return {k: v.astype(np.float32) for k, v in dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec,
                                                       threshold=threshold).items()}


def make_parity_case():
    d = os.path.join(SAE, "gemmascope_npz")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(515)
    np.savez(os.path.join(d, "params.npz"), **random_sae(rng, 64, 256, 20))
    sae = ref.load(d)
    rows = []
    while sum(len(r) for r in rows) < N:
        x = inputs(rng, 2 * N, 64, 1.0)
        rows.append(x[clear_of_edges(sae, x)])
    x = np.concatenate(rows)[:N]
    x[9, 4] = np.nan
    x[150, 63] = np.inf
    np.save(os.path.join(d, "x.npy"), x)
    recon, resid, feats, _ = ref.forward(sae, x)
    st, per = ref.statistics(x, recon, resid, feats)
    st["scaling_factor"] = 0.0
    st["architecture"] = "jumprelu"
    np.save(os.path.join(d, "expected_residual.npy"), resid)
    cols = ["count", "frequency", "mean", "var", "skew", "kurtosis"]
    np.save(os.path.join(d, "expected_features.npy"), np.stack([per[c] for c in cols], 1))
    with open(os.path.join(d, "expected_stats.json"), "w") as f:
        json.dump(st, f, indent=1)
    print("gemmascope_npz  d_in 64 d_sae 256  L0 %.1f  fvu %.4f  dead %d" % (st["mean_l0"], st["fvu"],
                                                                          st["dead_features"]))


def make_small_cases():
    d = os.path.join(SAE, "gemmascope_small")
    os.makedirs(d, exist_ok=True)
    p = random_sae(np.random.default_rng(516), 8, 16, 4)
    np.savez(os.path.join(d, "params.npz"), **p)
    np.savez_compressed(os.path.join(d, "params_deflated.npz"), **p)
    np.savez(os.path.join(d, "missing_threshold.npz"), **{k: v for k, v in p.items() if k != "threshold"})
    np.savez(os.path.join(d, "bad_shape.npz"), **dict(p, W_dec=np.ascontiguousarray(p["W_dec"].T)))
    np.savez(os.path.join(d, "short_threshold.npz"), **dict(p, threshold=p["threshold"][:15]))
    np.savez(os.path.join(d, "int_threshold.npz"), **dict(p, threshold=np.arange(16, dtype=np.int32)))
    zip_members(os.path.join(d, "bzip2.npz"), [(k + ".npy", npy_bytes(v)) for k, v in p.items()], zipfile.ZIP_BZIP2)


def main():
    make_npz_files()
    make_parity_case()
    make_small_cases()


if __name__ == "__main__":
    main()
