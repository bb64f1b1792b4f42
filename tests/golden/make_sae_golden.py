#!/usr/bin/python3
"""make_sae_golden.py: golden files for tests/test_sae.c, from tools/make-sae folders and
the independent float64 reference tools/sae_reference.py.

Each case folder tests/golden/sae/<case>/ holds
  cfg.json, sae_weights.safetensors (+ sparsity.safetensors)  the SAE (tools/make-sae)
  x.npy                 (200, d_in) float32 inputs; some cases hold NaN/Inf rows
  expected_residual.npy (200, d_in) float64 x - SAE(x) (NaN rows where x has NaN/Inf)
  expected_features.npy (d_sae, 6) float64: count, frequency, mean, var, skew, excess kurtosis
  expected_stats.json   scalar statistics, and the scaling_factor the case needs

Inputs are kept away from the discontinuities of the activations (a jumprelu pre within
1e-3 of its threshold, a topk row whose k-th and (k+1)-th pre differ by less than 1e-3),
where float32 and float64 may legitimately choose differently. Run from the repository
root: tests/golden/make_sae_golden.py
"""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import sae_reference as ref  # noqa: E402

OUT = os.path.join(ROOT, "tests", "golden", "sae")
N = 200

# name: (make-sae args, input scale, scaling factor, non-finite rows)
CASES = {
    "standard_jb": (["--arch", "standard", "--d-in", "32", "--d-sae", "256", "--l0", "20", "--sparsity",
                     "--scaling-factor-tensor"], 1.0, None, True),
    "jumprelu_v6_constnorm": (["--arch", "jumprelu", "--d-in", "32", "--d-sae", "256", "--l0", "15",
                               "--layout", "v6", "--normalize", "constant_norm_rescale"], 3.0, None, False),
    "jumprelu_log_nobdec": (["--arch", "jumprelu", "--d-in", "48", "--d-sae", "384", "--l0", "25",
                             "--log-threshold", "--no-apply-b-dec"], 1.0, None, False),
    "topk_v6_layernorm": (["--arch", "topk", "--d-in", "64", "--d-sae", "512", "--l0", "16", "--layout", "v6",
                           "--normalize", "layer_norm"], 1.5, None, False),
    "topk_old_expavg": (["--arch", "topk", "--d-in", "32", "--d-sae", "256", "--l0", "12", "--topk-as-activation",
                         "--normalize", "expected_average_only_in"], 2.0, 0.5, True),
}


def inputs(rng, n, d, scale):
    """Correlated, shifted rows (so the linear predictability of e is not trivial)."""
    a = rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    a /= np.sqrt((a * a).sum(0, keepdims=True) / 1.0)
    z = rng.standard_normal((n, d)) * (1 + 0.5 * rng.random(d))
    return (scale * (z @ a / np.sqrt(2)) + 0.05 * scale).astype(np.float32)


def clear_of_edges(sae, x):
    """Rows whose activation decisions are not within 1e-3 of flipping."""
    _, _, _, pre = ref.forward(sae, x)
    if sae["arch"] == "jumprelu":
        return (np.abs(pre - sae["threshold"]).min(1) > 1e-3)
    if sae["arch"] == "topk":
        k = sae["k"]
        s = -np.sort(-pre, axis=1)
        return s[:, k - 1] - s[:, k] > 1e-3
    return np.ones(len(x), bool)


def make_case(name, args, scale, sf, nonfinite, seed):
    d = os.path.join(OUT, name)
    # every case's normalised input has per-dimension scale about 1
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make-sae"), "--out", d, "--seed", str(seed),
                    "--input-scale", "1.0"] + args, check=True)
    sae = ref.load(d, scaling_factor=sf)
    d_in = sae["d_in"]
    rng = np.random.default_rng(seed + 100)
    rows = []
    while sum(len(r) for r in rows) < N:
        x = inputs(rng, 2 * N, d_in, scale)
        rows.append(x[clear_of_edges(sae, x)])
    x = np.concatenate(rows)[:N]
    if nonfinite:
        x[5, 3] = np.nan
        x[17, 0] = np.inf
        x[111, d_in - 1] = -np.inf
    np.save(os.path.join(d, "x.npy"), x)
    recon, resid, feats, _ = ref.forward(sae, x)
    st, per = ref.statistics(x, recon, resid, feats)
    st["scaling_factor"] = sf if sf is not None else 0.0
    st["architecture"] = sae["arch"]
    np.save(os.path.join(d, "expected_residual.npy"), resid)
    cols = ["count", "frequency", "mean", "var", "skew", "kurtosis"]
    np.save(os.path.join(d, "expected_features.npy"), np.stack([per[c] for c in cols], 1))
    with open(os.path.join(d, "expected_stats.json"), "w") as f:
        json.dump(st, f, indent=1)
    print("%-24s d_in %d d_sae %d  L0 %.1f  fvu %.4f  dead %d  pred %.3f" % (
        name, d_in, sae["W_dec"].shape[0], st["mean_l0"], st["fvu"], st["dead_features"],
        st["linear_predictability"]))


def main():
    os.makedirs(OUT, exist_ok=True)
    for i, (name, (args, scale, sf, nonfinite)) in enumerate(sorted(CASES.items())):
        make_case(name, args, scale, sf, nonfinite, seed=11 + i)


if __name__ == "__main__":
    main()
