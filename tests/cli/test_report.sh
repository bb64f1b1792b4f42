# pipelines/tiny-gpt2.yaml end to end (the text path: tokenizer, a random GPT-2
# and SAE made by our tools, tests/data/tiny-corpus): results.json with the
# plan's keys, the arrays, the four SVG plots, and report.html rendered in
# headless Chromium with its plots drawn and no console errors.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
mkdir -p build/tiny tests/data
ln -s "$ROOT/tests/data/tiny-corpus" tests/data/tiny-corpus
python3 "$ROOT/tools/make-gpt2" --n-embd 32 --n-layer 2 --n-head 2 --n-positions 128 --vocab-size 50257 \
    --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --seed 1 --out build/tiny/gpt2 >/dev/null || fail "make-gpt2"
python3 "$ROOT/tools/make-sae" --d-in 32 --d-sae 256 --l0 8 --input-scale 0.36 --hook blocks.1.hook_resid_pre \
    --seed 2 --out build/tiny/sae >/dev/null || fail "make-sae"
expect_ok $DMICA run "$ROOT/pipelines/tiny-gpt2.yaml" --out out
for f in results.json report.html residual_kurtosis.svg residual_pca.svg ica_sae_similarity.svg \
         ica_vs_sae_kurtosis.svg ica_directions.npy ica_filters.npy ica_sources.npy ica_activations.npy residuals.npy \
         ica_top_examples.json ica_unscaled_patterns.npy; do
    [ -s out/$f ] || fail "out/$f missing"
done
python3 - <<'P' || fail "results.json or the arrays are wrong"
import json, numpy as np
import xml.etree.ElementTree as ET
r = json.load(open("out/results.json"))
for key in ["model", "sae", "tokens_analyzed", "fraction_variance_unexplained_by_sae", "residual_mean_kurtosis",
            "n_ica_components", "ica_sae_similarity", "ica_component_kurtosis_mean", "sae_feature_kurtosis_mean",
            "hook", "layer", "verdict", "components", "null_baseline_similarity", "versions"]:
    assert key in r, key
assert any(s["op"] == "gpt2" for s in r["time_per_stage"])
for key in ["mean_max_cosine", "high_similarity_count", "low_similarity_count"]:
    assert key in r["ica_sae_similarity"], key
assert r["verdict"]["decision"] in ("gaussian_residual", "dark_matter_features", "sae_knows", "mixed")
k, n = r["n_ica_components"], r["tokens_analyzed"]
assert k == 16 and len(r["components"]) == k
d = np.load("out/ica_directions.npy")
assert d.shape == (k, 32) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
s = np.load("out/ica_sources.npy"); a = np.load("out/ica_activations.npy"); e = np.load("out/residuals.npy")
assert s.shape == (n, k) and a.shape == (n, k) and e.shape == (n, 32)
# sources are the filters applied to the centred residual; they have unit variance
f = np.load("out/ica_filters.npy")
s2 = (e - e.mean(0)) @ f.T
assert np.abs(s2 - s).max() < 1e-3 * np.abs(s).max()
assert np.allclose(s.var(0), 1, atol=2e-2), s.var(0)
# FVU is the plan's: sum var(e) / sum var(x)
st = json.load(open("out/activation_stats.json"))
assert abs(r["fraction_variance_unexplained_by_sae"] - e.var(0).sum() / np.sum(st["var"])) < 1e-4
# the patterns without the eigenvalue scaling: unit rows; results.json quotes ica_compare.json
u = np.load("out/ica_unscaled_patterns.npy")
assert u.shape == (k, 32) and np.allclose(np.linalg.norm(u, axis=1), 1, atol=1e-5)
c = json.load(open("out/ica_compare.json"))
for key in ["variance_explained_by_ica", "variance_explained_by_unscaled_reconstruction"]:
    assert r["ica_reconstruction"][key] == c[key], key
assert r["null_baseline_similarity"]["random_unit_mean_max_cosine"] == \
    c["null_baselines"]["random_unit"]["mean_max_cosine"]
assert r["ica_sae_similarity"]["high_similarity_count"] == c["ica_sae_similarity"]["high_similarity_count"]
# the SAE's and ICA's documents are embedded whole
assert r["sae_statistics"] == json.load(open("out/sae_stats.json"))
assert r["ica"]["seeds"] == json.load(open("out/ica.json"))["seeds"]
for f in ["residual_kurtosis", "residual_pca", "ica_sae_similarity", "ica_vs_sae_kurtosis"]:
    ET.parse("out/%s.svg" % f)        # well-formed
print("ok")
P
# a summary input wired to something else (here JSON text) is an error naming the input
cp "$ROOT/pipelines/tiny-gpt2.yaml" bad.yaml
printf '  bad_report:\n    op: report\n    inputs: {compare_summary: report.results}\n' >> bad.yaml
expect_fail $DMICA run bad.yaml --out out2
err_has "compare_summary"
err_has "not a typed summary"
command -v chromium >/dev/null 2>&1 || { echo "chromium missing: report rendering not checked"; exit 77; }
chromium --headless --no-sandbox --disable-gpu --enable-logging=stderr --v=0 --virtual-time-budget=3000 \
    --dump-dom "file://$(pwd)/out/report.html" > dom.html 2> chrome.log || fail "chromium failed"
svgs=$(grep -o '<svg' dom.html | wc -l)
[ "$svgs" -ge 20 ] || fail "expected the 4 plots and 16 component histograms, found $svgs <svg> elements"
grep -q 'class="bar"' dom.html || fail "no histogram bars drawn"
grep -q '<polyline class="line"' dom.html || fail "no PCA curve drawn"
grep -q 'id="verdict"' dom.html || fail "no verdict"
if grep -iE 'CONSOLE.*(error|uncaught)|Uncaught' chrome.log; then fail "console errors"; fi
chromium --headless --no-sandbox --disable-gpu --screenshot="$(pwd)/shot.png" --window-size=1200,1600 \
    "file://$(pwd)/out/report.html" 2>/dev/null
[ -s shot.png ] || fail "no screenshot"
echo ok
