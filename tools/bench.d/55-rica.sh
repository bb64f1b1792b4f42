#!/bin/sh
# RICA against FastICA on the same whitened data: RICA_ROWS (default 1000000)
# x RICA_DIM (100) rows of planted Laplace atoms (1.5 x RICA_DIM of them),
# whitened; the rica operator at K = RICA_DIM and 2 RICA_DIM, and fastica at
# k = RICA_DIM, all in RAM, one seed, on all cores. RICA_MAX_ITER (default 100)
# caps RICA's L-BFGS iterations (a full run to tol 1e-8 takes several hundred:
# docs/rica.md), so the table gives the time per evaluation (one pass over z:
# two GEMMs of K x k per row and K exps) beside the totals.
set -eu
: "${DMICA:=$(pwd)/bin/dmica}" "${PY:=/usr/bin/python3}"
rows=${RICA_ROWS:-1000000} k=${RICA_DIM:-100} maxit=${RICA_MAX_ITER:-100}
threads=$(nproc)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmica-bench-rica.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
$PY - "$rows" "$k" <<'P'
import numpy as np, sys
N, k = int(sys.argv[1]), int(sys.argv[2]); K = 3 * k // 2
rng = np.random.default_rng(0)
A = rng.standard_normal((k, K)); A /= np.linalg.norm(A, axis=0)
X = np.empty((N, k), np.float32)
for r in range(0, N, 100000):
    X[r:r + 100000] = rng.laplace(size=(min(100000, N - r), K)) @ A.T
X -= X.mean(0); l, V = np.linalg.eigh(np.cov(X.T, bias=True)); Wh = (V / np.sqrt(l)).T
np.save("z.npy", (X @ Wh.T).astype(np.float32))
P
load0=$(cut -d' ' -f1-3 /proc/loadavg)
run() { # name, node yaml
    cat > $1.yaml <<Y
name: $1
nodes:
  z: {op: npy, params: {path: z.npy}}
$2
Y
    $DMICA run $1.yaml --cache c_$1 --out o_$1 --threads "$threads" --quiet >&2
}
run ica "  ica: {op: fastica, inputs: {z: z}, params: {seeds: 1, memory: 4G, max_iter: 200}}"
run r1 "  rica: {op: rica, inputs: {z: z}, params: {K: $k, seeds: 1, memory: 4G, max_iter: $maxit}}"
run r2 "  rica: {op: rica, inputs: {z: z}, params: {K: $((2 * k)), seeds: 1, memory: 4G, max_iter: $maxit}}"
load1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "## RICA against FastICA ($rows x $k whitened, in RAM)"
echo
echo "Machine: $threads cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')). Load average"
echo "$load0 before the runs, $load1 after. Data: $((3 * k / 2)) Laplace atoms mixed into $k dimensions, whitened,"
echo "float32. One seed each; RICA logcosh, lambda 0.5, at most $maxit L-BFGS iterations; FastICA logcosh, tol 1e-4."
echo "Seconds are the operator's own (its JSON's timings: total, in RAM, the copy of z included)."
echo
echo "| operator | components | iterations | evaluations (passes over z) | seconds | seconds per evaluation |"
echo "|---|---|---|---|---|---|"
$PY - <<'P'
import json
i = json.load(open("o_ica/ica.json"))
print("| fastica | %d | %d | %d | %.1f | %.3f |" % (i["k"], i["iterations"], i["iterations"], i["timings"]["total_s"],
      i["timings"]["iterations_s"] / max(i["iterations"], 1)))
for r in ("r1", "r2"):
    j = json.load(open("o_%s/rica.json" % r)); s = j["seeds"][0]
    print("| rica | %d | %d (%s) | %d | %.1f | %.3f |" % (j["K"], s["iterations"], s["stop"], s["evaluations"],
          j["timings"]["total_s"], j["timings"]["iterations_s"] / max(s["evaluations"], 1)))
P
echo
