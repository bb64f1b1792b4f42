# The embedded demo: planted data whose answer is known. ICA must recover most
# of the atoms the SAE misses, the verdict must say so, and a second run must
# do no work.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
expect_ok $DMICA demo --out out
[ -s out/planted-sae/cfg.json ] && [ -s out/planted-sae/sae_weights.safetensors ] || fail "no planted SAE"
[ ! -e demo-data ] || fail "the demo writes nothing outside its cache and --out"
# the SAE is an edge of the DAG: the plan shows the planted_sae node feeding the sae node
grep -q "^  sae .*<- acts.out, planted_sae.sae" err.txt || { cat err.txt; fail "the plan lacks the SAE's edge"; }
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
# a stage's time holds all its work: in RAM, FastICA iterates at the end of its pass
t = {s["node"]: s["seconds"] for s in r["time_per_stage"]}
ica = json.load(open("out/ica.json"))
assert ica["in_ram"] and t["ica"] >= ica["timings"]["iterations_s"] > 0, (t["ica"], ica["timings"])
print("recovered", p["recovered_by_ica"], "of", p["atoms_missed_by_sae"])
P
grep -q 'id="planted"' out/report.html || fail "the report does not say what ICA recovered"
expect_ok $DMICA demo --out out2
if grep -q "ran (" err.txt; then cat err.txt; fail "a second demo run should come from the cache"; fi
cmp out/results.json out2/results.json || fail "cached results differ"
echo ok
