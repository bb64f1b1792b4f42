# The issue's acceptance check, too big for `make test`: `dmica stats` on a
# 2M x 768 float32 matrix (6.1 GB, written by the engine from the synthetic
# source) against numpy/scipy in float64, to 1e-6 relative on moments and
# eigenvalues. numpy works through the file in blocks so it fits in RAM.
set -eu
ROWS=${PARITY_ROWS:-2000000}
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/dmica-parity.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cat > "$dir/make.yaml" <<Y
name: make-matrix
nodes:
  source: {op: synthetic, params: {rows: $ROWS, cols: 768, seed: 7, factors: 16}}
  sink: {op: npy_sink, inputs: {x: source}, params: {file: x.npy}}
Y
echo "bench: writing a $ROWS x 768 matrix" >&2
"$DMICA" run "$dir/make.yaml" --cache "$dir/cache" --out "$dir" --quiet
rm -rf "$dir/cache"
echo "bench: dmica stats" >&2
t0=$(date +%s.%N)
"$DMICA" stats --in "$dir/x.npy" --out "$dir/stats" --cache "$dir/cache" --quiet
t1=$(date +%s.%N)
echo "bench: numpy reference" >&2
echo "## \`dmica stats\` against numpy/scipy on $ROWS x 768 (issue 2)"
echo
"$PY" - "$dir" <<'P'
import json, sys, time
import numpy as np
from scipy import stats as st
d = sys.argv[1]
x = np.load(d + "/x.npy", mmap_mode="r")
n, c = x.shape
t0 = time.time()
mean = np.zeros(c); m2 = np.zeros(c); m3 = np.zeros(c); m4 = np.zeros(c)
for j in range(0, c, 64):                       # columns in blocks: exact two-pass moments
    b = np.asarray(x[:, j:j + 64], dtype=np.float64)
    mu = b.mean(0); z = b - mu
    mean[j:j + 64] = mu; m2[j:j + 64] = (z**2).mean(0)
    m3[j:j + 64] = (z**3).mean(0); m4[j:j + 64] = (z**4).mean(0)
cov = np.zeros((c, c))
for i in range(0, n, 200000):                   # rows in blocks: centred float64 products
    b = np.asarray(x[i:i + 200000], dtype=np.float64) - mean
    cov += b.T @ b
cov /= n
ev = np.linalg.eigvalsh(cov)[::-1]
secs = time.time() - t0
js = json.load(open(d + "/stats/stats.json"))
pca = json.load(open(d + "/stats/pca.json"))
ours_cov = np.load(d + "/stats/covariance.npy")
def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.abs(a - b).max() / np.abs(b).max())
rows = [
    ("mean", rel(js["mean"], mean)),
    ("var", rel(js["var"], m2)),
    ("skew", rel(js["skew"], m3 / m2**1.5)),
    ("excess_kurtosis", rel(js["excess_kurtosis"], m4 / m2**2 - 3)),
    ("covariance", rel(ours_cov, cov)),
    ("eigenvalues", rel(pca["eigenvalues"], ev)),
]
print("| quantity | max abs error / max abs value | within 1e-6 |")
print("|---|---|---|")
for k, r in rows:
    print(f"| {k} | {r:.2e} | {'yes' if r < 1e-6 else 'NO'} |")
print()
print(f"numpy reference: {secs:.0f} s (float64, blocked).")
P
echo "dmica stats: $(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.0f", b - a }') s."
echo
echo "Command: \`dmica stats --in x.npy --out stats\` against numpy/scipy (tools/bench.d/15-stats-parity.sh)."
