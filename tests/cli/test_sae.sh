# dmica sae and the sae operator against the float64 reference (tools/sae_reference.py),
# on SAEs from tools/make-sae: residuals, reconstruction, statistics, the features
# stream, and bad input (d_in mismatch naming both, hook mismatch, unknown
# architecture, missing tensor, NaN/Inf rows counted and excluded).
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
expect_ok $DMICA sae --help; out_has "usage: dmica sae"
expect_fail $DMICA sae --in x.npy; err_has "--sae"

python3 "$ROOT/tools/make-sae" --out sae --d-in 48 --d-sae 384 --l0 20 --arch jumprelu --seed 3 || fail "make-sae"
python3 "$ROOT/tools/make-sae" --out topk --d-in 48 --d-sae 384 --l0 16 --arch topk --layout v6 \
    --normalize constant_norm_rescale --seed 4 || fail "make-sae topk"
python3 - <<'P'
import numpy as np
rng = np.random.default_rng(5)
x = (rng.standard_normal((3000, 48)) @ (np.eye(48) + 0.2 * rng.standard_normal((48, 48)))).astype(np.float32)
x[10, 4] = np.nan
x[2999, 0] = np.inf
np.save("x.npy", x)
np.save("x16.npy", x[:, :16])
P

for s in sae topk; do
    expect_ok $DMICA sae --sae $s --in x.npy --residual e_$s.npy --recon r_$s.npy --stats st_$s.json --tile 100
    err_has "2 of 3000 rows"
done
python3 - "$ROOT/tools" <<'P' || fail "dmica sae disagrees with the float64 reference"
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import sae_reference as ref
x = np.load("x.npy")
for s in ("sae", "topk"):
    sae = ref.load(s)
    recon, resid, feats, pre = ref.forward(sae, x)
    e, r = np.load("e_%s.npy" % s), np.load("r_%s.npy" % s)
    assert e.dtype == np.float32 and e.shape == x.shape
    bad = ~np.isfinite(x).all(1)
    assert np.isnan(e[bad]).all() and np.isfinite(e[~bad]).all()
    # decisions right at a jumprelu threshold or a topk boundary may flip in float32:
    # compare the rows clear of them
    if sae["arch"] == "jumprelu":
        ok = np.abs(pre - sae["threshold"]).min(1) > 1e-4
    else:
        p = -np.sort(-pre, 1)
        ok = p[:, sae["k"] - 1] - p[:, sae["k"]] > 1e-4
    keep = ~bad
    keep[keep] = ok
    err = np.abs(e[keep] - resid[keep]).max() / np.abs(resid[keep]).max()
    assert err < 1e-4, (s, err)
    assert np.abs(r[keep] - recon[keep]).max() / np.abs(recon[keep]).max() < 1e-4
    st, per = ref.statistics(x, recon, resid, feats)
    js = json.load(open("st_%s.json" % s))
    assert js["tokens"] == 2998 and js["nonfinite_rows"] == 2, js
    for k in ("fvu", "explained_variance", "mse", "mean_cosine", "mean_l0", "linear_predictability"):
        a, b = js[k], st[k]
        assert abs(a - b) <= 1e-3 * max(abs(b), 1e-3), (s, k, a, b)
print("ok")
P

# the operator in a pipeline: residual and features streams, stats, hook check
cat > p.yaml <<EOF
name: sae-test
nodes:
  acts: {op: npy, params: {path: x.npy}}
  sae: {op: sae, inputs: {x: acts}, params: {sae: sae, hook: blocks.6.hook_resid_pre, tile: 64}}
  resid: {op: npy_sink, inputs: {x: sae.residual}, params: {file: residual.npy}}
  feats: {op: npy_sink, inputs: {x: sae.features}, params: {file: features.npy}}
  values: {op: npy_sink, inputs: {x: sae.feature_values}, params: {file: feature_values.npy}}
EOF
expect_ok $DMICA run p.yaml --out out --quiet --memory 200M
[ -f out/sae_stats.json ] || fail "no sae_stats.json product"
python3 - <<'P' || fail "pipeline outputs differ from dmica sae"
import json
import numpy as np
e1, e2 = np.load("e_sae.npy"), np.load("out/residual.npy")
assert np.array_equal(np.isnan(e1), np.isnan(e2))
assert np.nanmax(np.abs(e1 - e2)) <= 1e-5 * np.nanmax(np.abs(e1)), np.nanmax(np.abs(e1 - e2))
a, b = json.load(open("st_sae.json")), json.load(open("out/sae_stats.json"))
for k in ("tokens", "nonfinite_rows", "dead_features", "l0_histogram"):
    assert a[k] == b[k], k
f, v = np.load("out/features.npy"), np.load("out/feature_values.npy")
assert f.dtype == np.int64 and f.shape[1] == 2, (f.dtype, f.shape)
assert v.dtype == np.float32 and v.shape == (len(f), 1), (v.dtype, v.shape)
row, feat = f[:, 0], f[:, 1]
assert (np.diff(row) >= 0).all() and row.max() < 3000
same = np.diff(row) == 0
assert (np.diff(feat)[same] > 0).all(), "features increase within a token"
assert len(f) == round(b["mean_l0"] * b["tokens"])
assert 10 not in set(row) and 2999 not in set(row)
# every (row, feature) pair carries the feature's activation: positive for this ReLU SAE
assert (v[:, 0] > 0).all()
print("ok")
P

# bad input
cat > bad.yaml <<EOF
name: bad
nodes:
  acts: {op: npy, params: {path: x16.npy}}
  sae: {op: sae, inputs: {x: acts}, params: {sae: sae, hook: blocks.6.hook_resid_pre}}
  resid: {op: npy_sink, inputs: {x: sae.residual}}
EOF
expect_fail $DMICA run bad.yaml --out bad --quiet
err_has "sae d_in 48 does not match input width 16 (hook blocks.6.hook_resid_pre)"
sed -i 's/x16.npy/x.npy/; s/blocks.6.hook_resid_pre/blocks.5.hook_resid_post/' bad.yaml
expect_fail $DMICA run bad.yaml --out bad --quiet
err_has "reads hook blocks.6.hook_resid_pre, but the input comes from hook blocks.5.hook_resid_post"
expect_fail $DMICA sae --sae sae --in x16.npy --residual e.npy
err_has "sae d_in 48 does not match input width 16"
[ ! -e e.npy ] || fail "e.npy written on error"
cp -r sae gated && sed -i 's/"architecture": "jumprelu"/"architecture": "gated"/' gated/cfg.json
expect_fail $DMICA sae --sae gated --in x.npy --residual e.npy
err_has "unknown architecture 'gated'"
python3 - <<'P'
import json, struct
# drop b_dec from the weights file
raw = open("sae/sae_weights.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
del hdr["b_dec"]
h = json.dumps(hdr).encode()
h += b" " * (-len(h) % 8)
import shutil, os
shutil.copytree("sae", "nobdec")
open("nobdec/sae_weights.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])
P
expect_fail $DMICA sae --sae nobdec --in x.npy --residual e.npy
err_has "tensor b_dec is missing"
[ ! -e e.npy ] || fail "e.npy written on error"
cache_consistent
echo ok
