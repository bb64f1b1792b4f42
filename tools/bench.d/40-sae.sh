#!/bin/sh
# SAE throughput: `dmica sae` end to end (encode, activation, sparse decode,
# residual, every statistic incl. the linear predictability) at d_in 768,
# d_sae 24576, L0 about 50 (tools/make-sae random weights), beside the rate of
# the encode GEMM alone (cblas_sgemm, M = tile, N = 24576, K = 768) measured in
# the same run with the same OpenBLAS and threads. Peak RSS at two token counts
# shows memory does not grow with the tokens. Env: SAE_TOKENS ("4096 16384"),
# SAE_TILE (256), SAE_THREADS (2).
set -eu
: "${ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}" "${DMICA:=$ROOT/bin/dmica}" "${PY:=/usr/bin/python3}"
tokens=${SAE_TOKENS:-"4096 16384"}
tile=${SAE_TILE:-256}
threads=${SAE_THREADS:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "bench sae: making the SAE and inputs in $tmp" >&2
"$PY" "$ROOT/tools/make-sae" --out "$tmp/sae" --d-in 768 --d-sae 24576 --l0 50 --seed 1
for n in $tokens; do
    "$PY" -c "import numpy as np; np.save('$tmp/x$n.npy', np.random.default_rng($n).standard_normal(($n, 768), dtype=np.float32))"
done
cat > "$tmp/gemm.c" <<'C'
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char **argv)
{
    int M = atoi(argv[1]), N = 24576, K = 768, reps = 0;
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N), *c = malloc(sizeof(float) * M * N);
    for (long i = 0; i < (long)M * K; i++) a[i] = (float)(i % 13) * 0.01f;
    for (long i = 0; i < (long)K * N; i++) b[i] = (float)(i % 7) * 0.01f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
    double t0 = now(), t;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
        reps++;
    } while ((t = now() - t0) < 3.0);
    printf("%.3f\n", 2.0 * M * N * K * reps / t / 1e9);
    return 0;
}
C
cc -O2 -o "$tmp/gemm" "$tmp/gemm.c" -lopenblas
gemm() { OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads "$tmp/gemm" "$tile"; }
echo "## SAE operator (d_in 768, d_sae 24576, L0 ~50)"
echo
echo "Measured by \`tools/bench.d/40-sae.sh\` (\`$threads\` threads, tile $tile): \`dmica sae --threads $threads --tile $tile\`"
echo "on random N(0,1) activations and a tools/make-sae SAE, with every statistic (FVU, MSE, cosine, L0 histogram,"
echo "per-feature moments, linear predictability). The encode GEMM alone (cblas_sgemm ${tile}x24576x768, same"
echo "OpenBLAS, same threads) is measured for 3 s just before and just after each run; their mean, in tokens/s"
echo "(GFLOP/s / 2·768·24576 = 75.5 MFLOP a token), is the ceiling for the whole pass. The machine is shared: rates move between runs."
echo
echo "| tokens | GEMM tokens/s | SAE tokens/s (pass) | % of GEMM | s with loading | mean L0 | peak RSS |"
echo "|---|---|---|---|---|---|---|"
for n in $tokens; do
    g1=$(gemm); echo "bench sae: $n tokens" >&2
    "$PY" - "$DMICA" "$tmp" "$n" "$tile" "$threads" "$g1" "$tmp/gemm" <<'P'
import re, resource, subprocess, sys, json
import os
dmica, tmp, n, tile, threads, g1, gexe = sys.argv[1:]
p = subprocess.run([dmica, "sae", "--sae", tmp + "/sae", "--in", "%s/x%s.npy" % (tmp, n), "--residual",
                    tmp + "/e.npy", "--stats", tmp + "/st.json", "--tile", tile, "--threads", threads],
                   capture_output=True, text=True)
if p.returncode:
    sys.exit(p.stderr)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
g2 = subprocess.run([gexe, tile], capture_output=True, text=True, env=env).stdout
gemm = (float(g1) + float(g2)) * 1e9 / 2 / (2 * 768 * 24576)
m = re.search(r"in ([0-9.]+) s \(([0-9.]+) tokens/s; ([0-9.]+) s with loading", p.stderr)
st = json.load(open(tmp + "/st.json"))
print("| %s | %.0f | %.0f | %.0f%% | %s | %.1f | %.0f MiB |" % (n, gemm, float(m.group(2)),
      100 * float(m.group(2)) / gemm, m.group(3), st["mean_l0"], rss))
P
done
echo
echo "Peak RSS is the weights (2 x 75 MB), one tile of pre-activations (tile x 24576 floats) and fixed"
echo "buffers: it does not grow with the token count (each row above is its own process)."
