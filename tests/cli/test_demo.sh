# The embedded demo: planted data whose answer is known. ICA must recover most
# of the atoms the SAE misses, the verdict must say so, and a second run must
# do no work.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
expect_ok $DMICA demo --out out
[ -s demo-data/planted-sae/cfg.json ] && [ -s demo-data/planted-sae/sae_weights.safetensors ] || fail "no planted SAE"
python3 - <<'P' || fail "the demo's results are wrong"
import json, numpy as np
r = json.load(open("out/results.json"))
p = r["planted"]
assert p["atoms_missed_by_sae"] == 16
assert p["recovered_by_ica"] >= 12, p          # "most": sklearn recovers 16 of 16 on these data
assert r["verdict"]["decision"] == "dark_matter_features", r["verdict"]
assert 0.1 < r["fraction_variance_unexplained_by_sae"] < 0.5
assert r["n_ica_components"] == 24
# the missed atoms are the first rows of the dictionary: the SAE's decoder lacks them
d = np.load("out/ica_directions.npy")
assert d.shape == (24, 64)
print("recovered", p["recovered_by_ica"], "of", p["atoms_missed_by_sae"])
P
grep -q 'id="planted"' out/report.html || fail "the report does not say what ICA recovered"
expect_ok $DMICA demo --out out2
if grep -q "ran (" err.txt; then cat err.txt; fail "a second demo run should come from the cache"; fi
cmp out/results.json out2/results.json || fail "cached results differ"
echo ok
