#!/usr/bin/python3
"""causal_reference.py: an independent float64 numpy reference of dmica's causal tests
(issue 14, docs/causal.md; the C kernel is operators/analysis/causal.c).

At blocks.L.hook_resid_pre, over token windows (W, T): the SAE's splice scores
(SAELens evals semantics), the ablation of each ICA component of the SAE's residual
(x - s_i a_i), of all of them at once, of energy-matched null directions, and of the
top-k principal directions of the residual (a same-rank control). Every number is
computed in float64 from the float32 inputs as stored; the model is
tools/gpt2_reference.py run from the hook (start=(L, x')), the SAE is
tools/sae_reference.py. It shares no code with dmica.

    import causal_reference as cr
    out = cr.causal(cr.gpt2_reference.GPT2(model_dir), cr.sae_reference.load(sae_dir),
                    layer, tokens, filters, mixing, nulls, null_kinds)

    tools/causal_reference.py --model DIR --sae DIR --layer L --windows W.npy \
        --filters F.npy --mixing A.npy --nulls U.npy [--null-kinds K1,K2,...] --out OUT.json

Shapes: windows int (W, T); filters (k, d); mixing (d, k); nulls (n, d).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_reference  # noqa: E402
import sae_reference  # noqa: E402


def log_softmax(logits):
    """float64 log-softmax over the last axis."""
    m = logits.max(-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


class Scorer:
    """CE and KL of edited runs against the clean run, over positions 0..T-2 of each window."""

    def __init__(self, model, layer, tokens, x):
        self.model, self.layer, self.tokens = model, layer, tokens
        W, T = tokens.shape
        self.W, self.T = W, T
        self.targets = tokens[:, 1:]  # (W, T-1): token p+1 is the target at position p
        self.clean_logp = self.logp(x)
        self.clean_p = np.exp(self.clean_logp)
        self.ce_clean = self.ce(self.clean_logp)

    def logp(self, x_edit):
        """log p (W, T-1, V) of the run from blocks.L.hook_resid_pre = x_edit (W*T, d)."""
        acts = self.model.run(self.tokens, start=(self.layer, x_edit))
        logits = acts["logits"].reshape(self.W, self.T, -1)[:, :-1]
        return log_softmax(logits)

    def ce(self, logp):
        picked = np.take_along_axis(logp, self.targets[..., None], -1)[..., 0]
        return float(-picked.mean())

    def kl(self, logp):
        return float((self.clean_p * (self.clean_logp - logp)).sum(-1).mean())

    def score(self, x_edit):
        """(CE, KL) of the run with x_edit at the hook."""
        lp = self.logp(x_edit)
        return self.ce(lp), self.kl(lp)


def causal(model, sae, layer, tokens, filters, mixing, nulls, null_kinds=None, check=True, levels=0):
    """Every number of docs/causal.md as a JSON-ready dict.

    model: gpt2_reference.GPT2; sae: sae_reference.load(...); tokens int (W, T);
    filters (k, d), mixing (d, k), nulls (n, d), cast to float64 here.
    levels: 0, each null scaled to each component's energy; L >= 2, to L energies
    log-spaced from the smallest component energy to the largest, and each null's
    KL and delta CE at a component's energy interpolated between the two levels
    around it (linear in log energy; KL in log KL).
    """
    tokens = np.asarray(tokens).astype(np.int64)
    F = np.asarray(filters).astype(np.float64)
    A = np.asarray(mixing).astype(np.float64)
    U = np.asarray(nulls).astype(np.float64)
    W, T = tokens.shape
    k, d = F.shape
    n = U.shape[0]
    assert A.shape == (d, k) and U.shape[1] == d and d == model.C
    null_kinds = list(null_kinds) if null_kinds is not None else ["unspecified"] * n
    assert len(null_kinds) == n
    hook = "blocks.%d.hook_resid_pre" % layer

    full = model.run(tokens)
    x = gpt2_reference.center(hook, full[hook])  # (W*T, d), centred per row
    sc = Scorer(model, layer, tokens, x)
    if check:
        # a LayerNorm reads every residual: running from the centred stream changes nothing
        raw = model.run(tokens, start=(layer, full[hook]))
        cen = model.run(tokens, start=(layer, x))
        assert np.abs(cen["logits"] - full["logits"]).max() < 1e-9
        assert np.abs(raw["logits"] - full["logits"]).max() < 1e-9
        ce_full = np.nanmean(full["loss"])  # the model's own per-token loss, positions 0..T-2
        assert abs(sc.ce_clean - ce_full) < 1e-9, (sc.ce_clean, ce_full)

    recon, e, _, _ = sae_reference.forward(sae, x)
    mu = e.mean(0)
    ec = e - mu
    S = ec @ F.T  # (W*T, k): s_it
    a_sq = (A * A).sum(0)  # ||a_i||^2
    energy = (S * S).mean(0) * a_sq  # mean_t ||s_it a_i||^2

    out = {"hook": hook, "layer": layer, "windows": W, "context": T, "tokens": W * T,
           "positions": W * (T - 1), "ce_clean": sc.ce_clean}

    ce_sae, kl_sae = sc.score(recon)
    ce_zero, kl_zero = sc.score(np.zeros_like(x))
    out["splice"] = {"ce_sae": ce_sae, "kl_sae": kl_sae, "ce_zero": ce_zero, "kl_zero": kl_zero,
                     "ce_loss_score": (ce_zero - ce_sae) / (ce_zero - sc.ce_clean),
                     "kl_div_score": (kl_zero - kl_sae) / kl_zero}

    ce_all, kl_all = sc.score(x - S @ A.T)
    out["all_components"] = {"delta_ce": ce_all - sc.ce_clean, "kl": kl_all}

    comp = []
    for i in range(k):
        ce_i, kl_i = sc.score(x - np.outer(S[:, i], A[:, i]))
        comp.append((ce_i - sc.ce_clean, kl_i))

    R = ec @ U.T  # (W*T, n): r_jt
    u_sq = (U * U).sum(1)
    null_energy = (R * R).mean(0) * u_sq  # mean_t ||r_jt u_j||^2
    targets = energy if not levels else np.geomspace(energy.min(), energy.max(), levels)
    scale = np.sqrt(targets[:, None] / null_energy[None, :])  # c_bj (targets, n)
    meas_kl = np.zeros((len(targets), n))
    meas_dce = np.zeros((len(targets), n))
    for b in range(len(targets)):
        for j in range(n):
            ce_bj, kl_bj = sc.score(x - scale[b, j] * np.outer(R[:, j], U[j]))
            meas_kl[b, j] = kl_bj
            meas_dce[b, j] = ce_bj - sc.ce_clean
    if not levels:
        null_kl, null_dce = meas_kl, meas_dce
    else:
        # interpolation in log energy between the levels around each component's energy
        lx = np.log(targets)
        null_kl, null_dce = np.zeros((k, n)), np.zeros((k, n))
        for i in range(k):
            b = min(max(int(np.searchsorted(lx, np.log(energy[i]))) - 1, 0), levels - 2)
            w = (np.log(energy[i]) - lx[b]) / (lx[b + 1] - lx[b])
            w = min(max(w, 0.0), 1.0)
            null_kl[i] = np.exp((1 - w) * np.log(meas_kl[b]) + w * np.log(meas_kl[b + 1]))
            null_dce[i] = (1 - w) * meas_dce[b] + w * meas_dce[b + 1]

    out["components"] = []
    for i, (dce, kl) in enumerate(comp):
        row = null_kl[i]
        out["components"].append({
            "component": i, "delta_ce": dce, "kl": kl,
            "null_percentile": 100.0 * float((row < kl).sum()) / n,
            "z": float((kl - row.mean()) / row.std(ddof=1)) if n > 1 else float("nan"),
        })
    out["nulls"] = {"count": n, "kinds": null_kinds, "kl": null_kl.tolist(), "delta_ce": null_dce.tolist(),
                    "scale": scale.tolist(), "energy": energy.tolist(),
                    "energy_levels": targets.tolist() if levels else None,
                    "level_kl": meas_kl.tolist() if levels else None}

    cov = ec.T @ ec / ec.shape[0]  # mean_t (e_t - mu)(e_t - mu)^T, divided by W*T
    lam, V = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, V = lam[order], V[:, order]
    P = V[:, :k].T  # (k, d)
    ce_p, kl_p = sc.score(x - (ec @ P.T) @ P)
    out["pca_control"] = {"delta_ce": ce_p - sc.ce_clean, "kl": kl_p,
                          "eigenvalues": lam[:k + 1].tolist()}

    out["mu"] = mu.tolist()
    out["s_mean_square"] = (S * S).mean(0).tolist()
    out["mixing_norm_square"] = a_sq.tolist()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face GPT-2 folder")
    p.add_argument("--sae", required=True, help="SAELens SAE folder (cfg.json + sae_weights.safetensors)")
    p.add_argument("--layer", type=int, required=True, help="the hook is blocks.LAYER.hook_resid_pre")
    p.add_argument("--windows", required=True, help="int .npy (W, T)")
    p.add_argument("--filters", required=True, help=".npy (k, d)")
    p.add_argument("--mixing", required=True, help=".npy (d, k)")
    p.add_argument("--nulls", required=True, help=".npy (n, d)")
    p.add_argument("--null-kinds", help="comma-separated kind of each null row")
    p.add_argument("--levels", type=int, default=0, help="energy levels of the nulls (0: each component's own)")
    p.add_argument("--out", required=True, help="JSON")
    a = p.parse_args()
    nulls = np.load(a.nulls)
    kinds = a.null_kinds.split(",") if a.null_kinds else None
    out = causal(gpt2_reference.GPT2(a.model), sae_reference.load(a.sae), a.layer, np.load(a.windows),
                 np.load(a.filters), np.load(a.mixing), nulls, kinds, levels=a.levels)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
