# The rica operator: on planted data with more atoms (40 Laplace sources) than
# the whitened dimension (24), RICA (K = 40) recovers clearly more atoms at
# |cos| > 0.9 than FastICA (k = 24) on the same z; in RAM, streamed (one pass
# per evaluation), split by shards (sums merged through pass_partial /
# pass_merge) and warm-started runs all recover them; the outputs are
# consistent (unit rows, mixing = unmixing^T, seeds matched to seed 0 with the
# stability reported); bad parameters fail clearly.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy/scipy not available"; exit 77; }
python3 - <<'P' || fail "cannot make planted data"
import numpy as np
rng = np.random.default_rng(0)
N, k, K = 20000, 24, 40
A = rng.standard_normal((k, K)); A /= np.linalg.norm(A, axis=0)
X = rng.laplace(size=(N, K)) @ A.T
X -= X.mean(0); l, V = np.linalg.eigh(X.T @ X / N); Wh = (V / np.sqrt(l)).T
np.save("z.npy", (X @ Wh.T).astype(np.float32))
At = Wh @ A; At /= np.linalg.norm(At, axis=0); np.save("atoms.npy", At.T)     # (K, k) unit rows
P
# name, rica params, run options
run() {
    n=$1; params=$2; shift 2
    cat > $n.yaml <<Y
name: rica
nodes:
  z: {op: npy, params: {path: z.npy}}
  rica: {op: rica, inputs: {z: z}, params: {K: 40, $params}}
  ica: {op: fastica, inputs: {z: z}, params: {seeds: 1}}
Y
    expect_ok $DMICA run $n.yaml --cache c_$n --out $n --quiet "$@"
    # the outputs are tensors: read them from the nodes' cache entries
    cp $(dirname $(ls c_$n/*/ica.json))/unmixing.npy $n/ica_unmixing.npy || fail "$n: no FastICA unmixing"
    cp $(dirname $(ls c_$n/*/rica.json))/*.npy $n/ || fail "$n: no RICA outputs"
    python3 - "$n" <<'P' || fail "$n: RICA outputs wrong"
import numpy as np, json, sys
n = sys.argv[1]
j = json.load(open(n + "/rica.json")); At = np.load("atoms.npy")
W = np.load(n + "/unmixing.npy"); M = np.load(n + "/mixing.npy"); Ws = np.load(n + "/unmixings.npy")
Wf = np.load(n + "/ica_unmixing.npy"); Wf = Wf / np.linalg.norm(Wf, axis=1, keepdims=True)
assert W.shape == (40, 24) and M.shape == (24, 40) and np.array_equal(M, W.T)
assert np.allclose(np.linalg.norm(W, axis=1), 1) and np.array_equal(Ws[0], W)
rica = int((np.abs(At @ W.T).max(1) > 0.9).sum()); ica = int((np.abs(At @ Wf.T).max(1) > 0.9).sum())
print(n, "RICA recovers", rica, "of 40 atoms, FastICA", ica, "; passes", j["passes"],
      [(s["iterations"], s["evaluations"], s["stop"]) for s in j["seeds"]])
assert rica >= 30 and ica <= 24 and rica - ica >= 10, (rica, ica)
assert j["converged"] and j["rows"] == 20000 and j["K"] == 40 and j["k"] == 24
# seeds matched: each seed's matched rows have the |cos| the stability reports
st = np.array(j["stability"]); S = len(j["seeds"])
c = np.abs((Ws * W[None]).sum(2)).min(0)
assert np.allclose(c, st, atol=1e-9), np.abs(c - st).max()
if S > 1:
    assert (st > 0.9).sum() >= 30, st
P
}
run ram "seeds: 2, memory: 100M"
python3 -c "import json; j = json.load(open('ram/rica.json')); assert j['in_ram'] and j['passes'] == 1, j['passes']" ||
    fail "ram: not in RAM"
run shards "seeds: 1" --shard 6000
# under the sanitizers (make test-san) the split streamed run above is the check
# of the streamed path: the unsplit one and the warm start are left to the
# plain pass (the warm start's sample is also FastICA's, unmixing.c)
if [ "${DMICA_SAN:-0}" != 1 ]; then
run stream "seeds: 1"
run warm "seeds: 1, warm_start: true, warm_rows: 10000"
python3 - <<'P' || fail "streamed runs wrong"
import json, numpy as np
s = json.load(open("stream/rica.json")); h = json.load(open("shards/rica.json")); w = json.load(open("warm/rica.json"))
assert not s["in_ram"] and s["passes"] == s["seeds"][0]["evaluations"], (s["passes"], s["seeds"][0]["evaluations"])
assert h["passes"] == h["seeds"][0]["evaluations"]
# shards merge the same sums: the same iterates as one stream (to float rounding)
d = np.abs(np.load("stream/unmixing.npy") - np.load("shards/unmixing.npy")).max()
assert d < 1e-6 and h["passes"] == s["passes"], (d, h["passes"], s["passes"])
# the warm start does many iterations on the sample: fewer passes over all rows
assert w["seeds"][0]["warm_iterations"] > 0 and w["passes"] < s["passes"], (w["passes"], s["passes"])
P
fi

# dmica analyze --rica K: RICA beside FastICA on the demo's planted activations
# (16 atoms the SAE misses, sparse non-negative magnitudes: where RICA does
# less well than FastICA, docs/rica.md), with the same products prefixed rica_
expect_ok $DMICA demo --out demo --quiet
cat > acts.yaml <<'Y'
nodes:
  atoms: {op: planted_sae, params: {d: 64, atoms: 96, missed: 16, seed: 1}}
  acts: {op: planted, inputs: {dictionary: atoms.dictionary}, params: {rows: 20000, l0: 2, seed: 1}}
  save: {op: npy_sink, inputs: {x: acts}, params: {file: acts.npy}}
Y
expect_ok $DMICA run acts.yaml --out a --cache ca --quiet
python3 -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(0).integers(0, 50000, size=(400, 50)).astype(np.int32))"
expect_ok $DMICA analyze --acts a/acts.npy --sae demo/planted-sae --tokens tokens.npy \
    --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --components 24 --seeds 2 --top 5 --rica 32 --out an --quiet
for f in rica.json rica_compare.json rica_directions.npy rica_filters.npy rica_mixing.npy rica_sources.npy \
         rica_activations.npy rica_top_examples.json rica_activation_top_examples.json rica_source_stats.json \
         ica_directions.npy; do
    [ -s an/$f ] || fail "an/$f missing"
done
python3 - <<'P2' || fail "analyze --rica: products wrong"
import numpy as np, json, glob
D = np.load(glob.glob("ca/*/dictionary.npy")[0]); miss = D[:16] / np.linalg.norm(D[:16], axis=1, keepdims=True)
R = np.load("an/rica_directions.npy"); F = np.load("an/rica_filters.npy"); I = np.load("an/ica_directions.npy")
assert R.shape == (32, 64) and F.shape == (32, 64) and np.allclose(np.linalg.norm(R, axis=1), 1)
assert np.load("an/rica_sources.npy").shape == (20000, 32)
c = json.load(open("an/rica_compare.json")); assert c["k"] == 32 and c["ica_sae_similarity"]["count"] == 32, c["k"]
j = json.load(open("an/rica.json")); assert j["K"] == 32 and j["k"] == 24 and len(j["seeds"]) == 2
t = json.load(open("an/rica_top_examples.json")); assert len(t["components"]) == 32
rica, ica = (int((np.abs(miss @ X.T).max(1) > 0.9).sum()) for X in (R, I))
print("analyze: missed atoms recovered at |cos| > 0.9: RICA K=32", rica, "of 16, FastICA k=24", ica)
assert rica >= 8, rica
# the report: results.json's "rica" and report.html's side-by-side table
r = json.load(open("an/results.json")); x = r["rica"]
assert x["n_components"] == 32 and len(x["components"]) == 32 and x["run"]["K"] == 32, x["n_components"]
mc = [e["max_abs_cos"] for e in c["ica_sae_similarity"]["components"]]
assert np.allclose([e["max_cos"] for e in x["components"]], mc)
assert abs(x["sae_similarity"]["mean_max_cosine"] - np.mean(mc)) < 1e-9
assert x["unstable_components"] == sum(s < 0.9 for s in j["stability"])
h = open("an/report.html").read(); assert '<table id="rica">' in h and "FastICA and RICA" in h
# RICA's cards, as FastICA's: one per component in their own sortable box, each
# with its numbers, its source histogram and its top and bottom examples
# (rica_top_examples.json) and top activation projections
import re, xml.etree.ElementTree as ET
assert h.count('<div class="card"') == 24 + 32
box = h[h.index('<div id="rica-cards">'):]; box = box[:box.index("</script>")]
cards = box.split('<div class="card"')[1:]
assert len(cards) == 32 and '<select id="rica-sort">' in h and "getElementById('rica-cards')" in h
ex = json.load(open("an/rica_top_examples.json"))["components"]
for i, c in enumerate(cards):
    assert "<h3>RICA component %d</h3>" % i in c and "<title>RICA component %d: source values</title>" % i in c, i
    assert "max |cos| with SAE %.3f" % x["components"][i]["max_cos"] in c, i
    assert "top (source value)" in c and "bottom" in c and "top (activation projection" in c, i
    rows = re.findall(r'<td class="num">([^<]*)</td><td class="ctx">', c)
    assert len(rows) == 5 + 5 + 5, (i, len(rows))                    # --top 5: top, bottom, activation top
    v = ex[i]["top"][0]["value"]                                    # printed with %.3g
    assert abs(float(rows[0]) - v) <= 5e-3 * abs(v), (i, rows[0], v)
assert h.index("<h2>Components</h2>") < h.index("<h2>RICA components</h2>")
# RICA's plots: its SAE similarity and kurtosis beside FastICA's, in files and on the page
for f in ("rica_sae_similarity", "rica_vs_sae_kurtosis"):
    t = ET.parse("an/%s.svg" % f).getroot()
    assert open("an/%s.svg" % f).read() in h, f
sim = open("an/rica_sae_similarity.svg").read()
assert "RICA component similarity to SAE features" in sim and "null: random from residual covariance" in sim
assert "Sparsity of RICA components vs SAE features" in open("an/rica_vs_sae_kurtosis.svg").read()
P2
# without --rica: no RICA section, cards or plots (FastICA's alone)
for f in demo/rica_sae_similarity.svg demo/rica_vs_sae_kurtosis.svg; do [ ! -e $f ] || fail "$f without RICA"; done
grep -q "RICA" demo/report.html && fail "demo/report.html mentions RICA without it"
expect_fail $DMICA analyze --acts a/acts.npy --sae demo/planted-sae --components 24 --rica 32 --rica-lambda -1 \
    --out bad2 --quiet
err_has "lambda -1"

# bad parameters
cat > bad.yaml <<'Y'
name: bad
nodes:
  z: {op: npy, params: {path: z.npy}}
  rica: {op: rica, inputs: {z: z}, params: {g: cube}}
Y
expect_fail $DMICA run bad.yaml --cache cb --out bad --quiet
err_has "g 'cube': expected logcosh or sqrt"
sed 's/g: cube/lambda: -1/' bad.yaml > bad2.yaml
expect_fail $DMICA run bad2.yaml --cache cb --out bad --quiet
err_has "lambda -1"
sed 's/g: cube/K: -3/' bad.yaml > bad3.yaml
expect_fail $DMICA run bad3.yaml --cache cb --out bad --quiet
err_has "K -3"
exit 0
