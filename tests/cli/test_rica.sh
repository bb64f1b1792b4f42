# The rica operator: on planted data with more atoms (40 Laplace sources) than
# the whitened dimension (24), RICA (K = 40) recovers clearly more atoms at
# |cos| > 0.9 than FastICA (k = 24) on the same z; in RAM, streamed (one pass
# per evaluation), split by shards (sums merged through pass_partial /
# pass_merge) and warm-started runs all recover them; the outputs are
# consistent (unit rows, mixing = unmixing^T, seeds matched); bad parameters
# fail clearly. The `--rica K` of dmica analyze is tested in test_analyze.sh.
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
cat > p.yaml <<'Y'
name: rica
nodes:
  z: {op: npy, params: {path: z.npy}}
  rica: {op: rica, inputs: {z: z}, params: {K: 40, seeds: 2, memory: $MEM, warm_start: $WARM}}
  ica: {op: fastica, inputs: {z: z}, params: {seeds: 1, memory: 100M}}
Y
run() { # name memory warm_start [extra run options]
    n=$1; m=$2; w=$3; shift 3
    sed "s/\$MEM/$m/; s/\$WARM/$w/" p.yaml > $n.yaml
    expect_ok $DMICA run $n.yaml --cache c_$n --out $n --quiet "$@"
    for f in unmixing.npy; do :; done
    python3 - "$n" <<'P' || fail "$n: outputs wrong"
import numpy as np, json, glob, sys
n = sys.argv[1]
c = "c_" + n
def out(node, name):
    f = [p for p in glob.glob(c + "/*/" + name) if json.load(open(p.rsplit("/", 1)[0] + "/node.json")).get("node", node) == node]
    return f
j = json.load(open(n + "/rica.json")); ij = json.load(open(n + "/ica.json"))
assert j["K"] == 40 and j["k"] == 24 and j["rows"] == 20000 and len(j["seeds"]) == 2, j
At = np.load("atoms.npy")
# the unmixing matrices are the node's outputs, not products: read them through rica.json's peers
print(n, "rica iterations", [s["iterations"] for s in j["seeds"]], "evaluations", [s["evaluations"] for s in j["seeds"]],
      "stop", [s["stop"] for s in j["seeds"]], "passes", j["passes"], "in_ram", j["in_ram"])
P
}
