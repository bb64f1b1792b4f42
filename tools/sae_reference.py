"""sae_reference.py: an independent float64 numpy reference of SAELens SAEs and of the
statistics dmica's sae operator reports (docs/sae.md), for golden files and CLI tests.

It shares no code with dmica: it reads cfg.json and safetensors itself and follows
SAELens's formulas (sae_lens/saes/*.py) densely, feature
matrix and all, which is fine at test sizes.

Gemma Scope's original release (google/gemma-scope-*: params.npz with W_enc, W_dec,
b_enc, b_dec, threshold) is read with numpy's own np.load and the settings SAELens's
gemma_2 loader gives it (sae_lens/loading/pretrained_sae_loaders.py,
get_gemma_2_config_from_hf): JumpReLU, no b_dec on the input, no normalisation.

    import sae_reference as ref
    sae = ref.load("folder", scaling_factor=None)   # or "folder/params.npz"
    recon, resid, feats = ref.forward(sae, x)
    st = ref.statistics(x, recon, resid, feats)
"""
import json
import os
import struct

import numpy as np

DT = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in hdr.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=DT[v["dtype"]]).reshape(v["shape"]).astype(np.float64)
    return out


def _get(cfg, key, default=None):
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    for nest in ("metadata", "meta"):
        if isinstance(cfg.get(nest), dict) and cfg[nest].get(key) is not None:
            return cfg[nest][key]
    return default


def load_npz(path):
    """A Gemma Scope params.npz (a file, or a folder holding one and no cfg.json)."""
    if os.path.isdir(path):
        path = os.path.join(path, "params.npz")
    with np.load(path) as z:
        # SAELens renames w_* to W_* (older files)
        w = {("W_" + k[2:] if k.startswith("w_") else k): z[k].astype(np.float64) for k in z.files}
    d_in = w["W_enc"].shape[0]
    return dict(arch="jumprelu", k=None, norm="none", apply_b_dec=False, W_enc=w["W_enc"], W_dec=w["W_dec"],
                b_enc=w["b_enc"], b_dec=w["b_dec"], threshold=w["threshold"], scaling_factor=None, d_in=d_in)


def load(folder, scaling_factor=None):
    if folder.endswith(".npz") or not os.path.exists(os.path.join(folder, "cfg.json")):
        return load_npz(folder)
    cfg = json.load(open(os.path.join(folder, "cfg.json")))
    w = read_safetensors(os.path.join(folder, "sae_weights.safetensors"))
    arch = _get(cfg, "architecture", "standard")
    act = _get(cfg, "activation_fn", _get(cfg, "activation_fn_str", "relu"))
    k = None
    if arch == "standard" and act == "topk":
        arch = "topk"
    if arch == "topk":
        k = _get(cfg, "k") or _get(cfg, "activation_fn_kwargs", {})["k"]
    if arch not in ("standard", "jumprelu", "topk"):
        raise ValueError("unknown architecture " + arch)
    norm = _get(cfg, "normalize_activations", "none")
    if norm is True:
        norm = "expected_average_only_in"
    if norm is False:
        norm = "none"
    sae = dict(arch=arch, k=k, norm=norm, apply_b_dec=bool(_get(cfg, "apply_b_dec_to_input", True)),
               W_enc=w["W_enc"], W_dec=w["W_dec"], b_enc=w["b_enc"], b_dec=w["b_dec"],
               scaling_factor=scaling_factor, d_in=int(cfg["d_in"]) if "d_in" in cfg else w["W_enc"].shape[0])
    if arch == "jumprelu":
        sae["threshold"] = w["threshold"] if "threshold" in w else np.exp(w["log_threshold"])
    if _get(cfg, "finetuning_scaling_factor", False):
        sae["W_dec"] = sae["W_dec"] * w["scaling_factor"][:, None]
    return sae


def forward(sae, x):
    """x (n, d_in) -> reconstruction, residual (n, d_in) and features (n, d_sae), float64.
    Rows with NaN/Inf get NaN reconstruction and residual and no features."""
    x = np.asarray(x, np.float64)
    good = np.isfinite(x).all(1)
    xg = x[good]
    d = xg.shape[1]
    norm = sae["norm"]
    if norm == "expected_average_only_in":
        s = sae["scaling_factor"]
        xi, undo = xg * s, (lambda y: y / s)
    elif norm == "constant_norm_rescale":
        c = np.sqrt(d) / np.linalg.norm(xg, axis=1, keepdims=True)
        xi, undo = xg * c, (lambda y: y / c)
    elif norm == "layer_norm":
        mu = xg.mean(1, keepdims=True)
        sd = (xg - mu).std(1, ddof=1, keepdims=True)
        xi, undo = (xg - mu) / (sd + 1e-5), (lambda y: y * sd + mu)
    else:
        xi, undo = xg, (lambda y: y)
    if sae["apply_b_dec"]:
        xi = xi - sae["b_dec"]
    pre = xi @ sae["W_enc"] + sae["b_enc"]
    if sae["arch"] == "standard":
        f = np.maximum(pre, 0)
    elif sae["arch"] == "jumprelu":
        f = np.maximum(pre, 0) * (pre > sae["threshold"])
    else:
        k = sae["k"]
        idx = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        f = np.zeros_like(pre)
        rows = np.arange(pre.shape[0])[:, None]
        f[rows, idx] = np.maximum(pre[rows, idx], 0)
    y = undo(f @ sae["W_dec"] + sae["b_dec"])
    n = x.shape[0]
    recon = np.full((n, d), np.nan)
    recon[good] = y
    feats = np.zeros((n, sae["W_dec"].shape[0]))
    feats[good] = f
    return recon, x - recon, feats, pre


def statistics(x, recon, resid, feats):
    """The statistics docs/sae.md defines, over the finite rows of x."""
    from scipy import stats as sst
    good = np.isfinite(np.asarray(x, np.float64)).all(1)
    x, h, e, f = (np.asarray(a, np.float64)[good] for a in (x, recon, resid, feats))
    n, d = x.shape
    vx, ve = x.var(0).sum(), e.var(0).sum()
    cos = (x * h).sum(1) / np.sqrt((x * x).sum(1) * (h * h).sum(1))
    l0 = (f > 0).sum(1)
    count = (f > 0).sum(0)
    xc, ec = x - x.mean(0), e - e.mean(0)
    B, *_ = np.linalg.lstsq(xc, ec, rcond=None)
    pred = ((xc @ B) ** 2).sum() / (ec ** 2).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        fvar = f.var(0)
        skew = np.where(fvar > 0, sst.skew(f, 0), np.nan)
        kurt = np.where(fvar > 0, sst.kurtosis(f, 0), np.nan)
    return dict(
        tokens=int(n), nonfinite_rows=int((~good).sum()), fvu=ve / vx, explained_variance=1 - ve / vx,
        total_variance_x=vx, total_variance_residual=ve, mse=(e ** 2).mean(), sse_per_token=(e ** 2).sum(1).mean(),
        mean_cosine=cos.mean(), mean_l0=l0.mean(), l0_max=int(l0.max()),
        l0_histogram=np.bincount(l0).tolist(), dead_features=int((count == 0).sum()),
        dense_features=int((count / n > 1e-3).sum()), linear_predictability=pred,
    ), dict(count=count.astype(np.float64), frequency=count / n, mean=f.mean(0), var=fvar, skew=skew, kurtosis=kurt)
