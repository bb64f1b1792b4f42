# The causal stage (issue 14) in a pipeline: a tiny GPT-2 and SAE, the ICA of
# the residual, then `causal` on all of the run's tokens. causal.json has the
# schema of docs/causal.md, causal_windows.npy the windows it used, and every
# number that does not depend on the random nulls (the clean CE, the SAE's
# splice scores, each component's and all components' ablation, the PCA
# control) equals the float64 reference (tools/causal_reference.py) run on the
# same windows, filters and mixing, at 1e-4 relative (the CE differences within
# max(1e-4 |v|, 2e-6): docs/causal.md). Bad wiring is refused by name.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy not available"; exit 77; }
G=$ROOT/tests/golden/gpt2/c64h4       # vocab 101, 2 layers, n_positions 32, d_model 64
S=$ROOT/tests/golden/causal/c64h4/sae # blocks.1.hook_resid_pre, d_sae 128
python3 -c "
import numpy as np
t = np.random.default_rng(5).integers(0, 100, size=(40, 16)).astype(np.int32)
t[:, 0] = 100
np.save('tokens.npy', t)"
cat > p.yaml <<Y
name: causaltest
nodes:
  sae_config: {op: sae_config, params: {path: $S}}
  text: {op: text, params: {path: tokens.npy, context: 16}}
  gpt2: {op: gpt2, inputs: {tokens: text.windows, sae: sae_config}, params: {model: $G, hooks: blocks.1.hook_resid_pre}}
  sae: {op: sae, inputs: {x: gpt2.blocks.1.hook_resid_pre, sae: sae_config}}
  cov: {op: covariance, inputs: {x: sae.residual}}
  pca: {op: pca, inputs: {covariance: cov.covariance}, params: {k: 3}}
  whiten: {op: project, inputs: {x: sae.residual, matrix: pca.whitening, mean: cov.mean}}
  ica: {op: fastica, inputs: {z: whiten}, params: {seeds: 1, max_iter: 200}}
  compare:
    op: ica_compare
    inputs: {unmixing: ica.unmixing, eigenvalues: pca.eigenvalues, components: pca.components, mean: cov.mean}
    params: {filters_file: ica_filters.npy, mixing_file: ica_mixing.npy}
  causal:
    op: causal
    inputs: {windows: text.windows, sae: sae_config, filters: compare.filters, mixing: compare.mixing,
             mean: cov.mean, eigenvalues: pca.eigenvalues, components: pca.components}
    params: {model: $G, tokens: 100000, nulls: 3, rows: 100}
  report:
    op: report
    inputs: {eigenvalues: pca.eigenvalues, causal: causal.components, causal_band: causal.null_band,
             causal_summary: causal.summary}
Y
expect_ok $DMICA run p.yaml --out out --quiet
[ -f out/causal.json ] && [ -f out/causal_windows.npy ] || fail "causal.json and causal_windows.npy not in out/"
python3 -c "
import numpy as np
np.save('nulls.npy', np.eye(64, dtype=np.float32)[:2])  # the reference needs some; their numbers are not compared"
python3 "$ROOT/tools/causal_reference.py" --model $G --sae $S --layer 1 --windows out/causal_windows.npy \
    --filters out/ica_filters.npy --mixing out/ica_mixing.npy --nulls nulls.npy --out ref.json || fail "reference"
python3 - <<'P' || fail "causal.json differs from the reference"
import json
import numpy as np
c, r = json.load(open("out/causal.json")), json.load(open("ref.json"))
w = np.load("out/causal_windows.npy")
assert w.dtype == np.int32 and w.shape == (40, 16), (w.dtype, w.shape)
assert (w == np.load("tokens.npy")).all()
assert c["tokens"] == 640 and c["positions"] == 40 * 15
def near(a, b, what, floor=0.0):
    ok = abs(a - b) <= max(1e-4 * abs(b), floor)
    print(f"{what}: {a:.8g} (reference {b:.8g})" + ("" if ok else "  <- differs"))
    return ok
ok = near(c["ce_clean"], r["ce_clean"], "ce_clean")
for key in ("ce_sae", "kl_sae", "ce_zero", "kl_zero", "ce_loss_score", "kl_div_score"):
    ok &= near(c["splice"][key], r["splice"][key], key)
ok &= near(c["all_components"]["delta_ce"], r["all_components"]["delta_ce"], "all delta_ce", 2e-6)
ok &= near(c["all_components"]["kl"], r["all_components"]["kl"], "all kl")
ok &= near(c["pca_control"]["delta_ce"], r["pca_control"]["delta_ce"], "pca delta_ce", 2e-6)
ok &= near(c["pca_control"]["kl"], r["pca_control"]["kl"], "pca kl")
assert len(c["components"]) == 3
for a, b in zip(c["components"], r["components"]):
    ok &= near(a["delta_ce"], b["delta_ce"], f"component {a['component']} delta_ce", 2e-6)
    ok &= near(a["kl"], b["kl"], f"component {a['component']} kl")
    assert 0 <= a["null_percentile"] <= 100 and a["null_kl_q05"] <= a["null_kl_median"] <= a["null_kl_q95"]
    assert a["above_null_q95"] == (a["kl"] > a["null_kl_q95"])
assert c["nulls"]["per_kind"] == 3 and c["nulls"]["kinds"] == ["isotropic", "covariance"]
assert c["components_above_null_q95"] == sum(a["above_null_q95"] for a in c["components"])
# the report: the same columns in results.json's component table, the summary, the verdict's count
res = json.load(open("out/results.json"))
same = lambda x, y: abs(x - y) <= 1e-9 * max(abs(y), 1e-12)  # causal.json holds 10 significant digits
for a, b in zip(c["components"], res["components"]):
    assert all(same(b[key], a[key]) for key in ("kl", "delta_ce", "null_percentile", "z", "null_kl_q95")), (a, b)
assert same(res["causal"]["splice"]["kl_div_score"], c["splice"]["kl_div_score"])
assert res["causal"]["components_above_null_q95"] == c["components_above_null_q95"]
assert res["verdict"]["numbers"]["causally_distinguishable_components"] == c["components_above_null_q95"]
raise SystemExit(0 if ok else 1)
P
grep -q 'id="causal"' out/report.html && grep -q "ablation: KL" out/report.html && grep -q 'value="-kl"' out/report.html ||
    fail "report.html lacks the causal tests"
grep -q "<svg" out/causal.svg || fail "no causal.svg"
# dmica causal RUN_DIR: the same study on a finished run without the stage,
# through its pipeline.yaml and cache (only the new node runs): the same file
python3 -c "
s = open('p.yaml').read()
open('nocausal.yaml', 'w').write(s[:s.index('  causal:')])"
expect_ok $DMICA run nocausal.yaml --out run1 --quiet --device auto
[ -f run1/pipeline.yaml ] && [ ! -f run1/causal.json ] || fail "run1: pipeline.yaml expected, no causal.json"
# what enters cache keys is kept: the shard size, and the run's --device on each node
grep -q "^shard: 1000000" run1/pipeline.yaml || fail "pipeline.yaml lacks the run's shard size"
[ "$(grep -c "device: auto" run1/pipeline.yaml)" = "$(grep -c "^    op: " run1/pipeline.yaml)" ] ||
    fail "pipeline.yaml lacks the run's --device on its nodes"
expect_ok $DMICA causal run1 --tokens 100000 --nulls 3 --rows 100
! grep -q "gpt2, sae" err.txt || fail "dmica causal ran the model's group again: the run's cache was not reused"
cmp run1/causal.json out/causal.json || fail "dmica causal and the pipeline's causal node differ"
cmp run1/causal_windows.npy out/causal_windows.npy || fail "causal_windows.npy differs"
expect_fail $DMICA causal nowhere
err_has "nowhere/pipeline.yaml"
# a run with the stage already (out, from p.yaml) says how to run another study
expect_fail $DMICA causal out
err_has "the run has its causal stage already (node 'causal', results in causal.json)"
err_has "--set causal.tokens=N"
# energy_levels must be 0 or at least 2
expect_fail $DMICA run p.yaml --quiet --set causal.energy_levels=1
err_has "energy_levels must be 0 (each component's own energy) or at least 2, not 1"
# refusals: no SAE, and a mixing that does not fit the filters
sed 's/inputs: {windows: text.windows, sae: sae_config,/inputs: {windows: text.windows,/' p.yaml > nosae.yaml
expect_fail $DMICA run nosae.yaml --quiet
err_has "node 'causal'"; err_has "no SAE: set parameter sae (a SAELens folder) or connect input sae"
sed 's/mixing: compare.mixing,/mixing: compare.filters,/' p.yaml > badmix.yaml
expect_fail $DMICA run badmix.yaml --quiet
err_has "inputs filters (k x d) and mixing (d x k) must be ica_compare's"
# Gemma 2 (an RMSNorm model, never centred) with an SAE at blocks.1.hook_resid_post,
# which is blocks.2.hook_resid_pre: the study runs from there. No float64
# reference here (the Gemma 2 runner's own parity is tests/test_gemma2.c); the
# checks are what must hold whatever the weights: finite numbers, the SAE's
# splice between the clean run and zeros, KLs >= 0.
GM=$ROOT/tests/golden/gemma2/h24kv1   # d_model 24, 4 layers, vocab 64, 32 positions
python3 "$ROOT/tools/make-sae" --d-in 24 --d-sae 64 --l0 8 --hook blocks.1.hook_resid_post --no-center \
    --seed 3 --out gsae >/dev/null || fail "make-sae"
python3 -c "
import numpy as np
t = np.random.default_rng(6).integers(3, 64, size=(24, 16)).astype(np.int32)
t[:, 0] = 2
np.save('gtokens.npy', t)"
sed -e "s#$S#gsae#; s#$G#$GM#g; s#tokens.npy#gtokens.npy#; s#blocks.1.hook_resid_pre#blocks.1.hook_resid_post#g; s#op: gpt2#op: model#" \
    p.yaml > gemma.yaml
expect_ok $DMICA run gemma.yaml --out gout --quiet
python3 - <<'P' || fail "gemma: causal.json"
import json, math
c = json.load(open("gout/causal.json"))
sp = c["splice"]
nums = [c["ce_clean"], *sp.values(), *(x[k] for x in c["components"] for k in ("delta_ce", "kl", "z"))]
assert all(math.isfinite(v) for v in nums), nums
assert 0 <= sp["kl_sae"] < sp["kl_zero"], sp
assert all(x["kl"] >= 0 for x in c["components"])
assert c["tokens"] == 24 * 16
print("gemma causal: ce_clean %.4f, kl_sae %.4g, kl_zero %.4g, component kl %s" % (
    c["ce_clean"], sp["kl_sae"], sp["kl_zero"], [round(x["kl"], 5) for x in c["components"]]))
P
echo ok
