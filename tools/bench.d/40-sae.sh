#!/bin/sh
# SAE throughput: `dmica sae` end to end (encode, activation, sparse decode,
# residual, every statistic incl. the linear predictability) at d_in 768,
# d_sae 24576, L0 about 50 (tools/make-sae random weights), beside the rate of
# the encode GEMM alone (M = tile, N = 24576, K = 768) measured in the same run
# with the same OpenBLAS and threads, and the target of issue 4 (item 6): the
# SAE at 80% of the GEMM or more (dmica's own encode, dm_sgemm on packed weights
# where the CPU has AVX-512F, is faster than that GEMM). Peak RSS at two token
# counts shows memory does not grow with the tokens.
#
# The GEMM rate is the best we can get for that problem, taken two ways, the
# better one counting: one multithreaded cblas_sgemm a tile (OpenBLAS's
# threads), and single-threaded SGEMMs on column panels of 512 features spread
# over OpenMP threads (what dmica does), each timed over as many tiles as the
# SAE pass encodes (like for like: the same work, over about the same time). On
# a shared machine both sides are taken at their best: the GEMM is measured
# before each of SAE_REPEAT `dmica sae` runs, and the best of each is compared. Env: SAE_TOKENS ("4096 16384"), SAE_TILE (256), SAE_THREADS (2),
# SAE_REPEAT (3).
set -eu
: "${ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}" "${DMICA:=$ROOT/bin/dmica}" "${PY:=/usr/bin/python3}"
tokens=${SAE_TOKENS:-"4096 16384"}
tile=${SAE_TILE:-256}
threads=${SAE_THREADS:-2}
repeat=${SAE_REPEAT:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "bench sae: making the SAE and inputs in $tmp" >&2
"$PY" "$ROOT/tools/make-sae" --out "$tmp/sae" --d-in 768 --d-sae 24576 --l0 50 --seed 1
for n in $tokens; do
    "$PY" -c "import numpy as np; np.save('$tmp/x$n.npy', np.random.default_rng($n).standard_normal(($n, 768), dtype=np.float32))"
done
cat > "$tmp/gemm.c" <<'C'
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
enum { N = 24576, K = 768, PANEL = 512 };
/* one pass of pre (M, N) = a (M, K) @ b (K, N): mode 0 one multithreaded SGEMM,
 * mode 1 single-threaded SGEMMs on column panels over OpenMP threads */
static void pass(int mode, int M, const float *a, const float *b, float *c)
{
    if (mode == 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, b, N, 0, c, N);
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < N / PANEL; p++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, PANEL, K, 1, a, K, b + p * PANEL, N, 0,
                    c + (long)p * PANEL, N);
}
/* prints the GFLOP/s of the better mode, each timed over the GEMMs of `tokens` rows
 * (as many tiles as the SAE pass encodes), and the mode */
int main(int argc, char **argv)
{
    int M = atoi(argv[1]), threads = atoi(argv[2]), tiles = (atoi(argv[3]) + M - 1) / M;
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N), *c = malloc(sizeof(float) * M * N);
    for (long i = 0; i < (long)M * K; i++) a[i] = (float)(i % 13) * 0.01f;
    for (long i = 0; i < (long)K * N; i++) b[i] = (float)(i % 7) * 0.01f;
    double best[2] = {0, 0};
    for (int mode = 0; mode < 2; mode++) {
        openblas_set_num_threads(mode == 0 ? threads : 1);
        omp_set_num_threads(threads);
        pass(mode, M, a, b, c);
        double t0 = now();
        for (int i = 0; i < tiles; i++)
            pass(mode, M, a, b, c);
        best[mode] = 2.0 * M * N * K * tiles / (now() - t0) / 1e9;
    }
    printf("%.3f %s\n", best[0] > best[1] ? best[0] : best[1], best[0] > best[1] ? "multithreaded" : "panels");
    fprintf(stderr, "bench sae: GEMM GFLOP/s: multithreaded %.1f, panels %.1f\n", best[0], best[1]);
    return 0;
}
C
cc -O2 -fopenmp -o "$tmp/gemm" "$tmp/gemm.c" -lopenblas
echo "## SAE operator (d_in 768, d_sae 24576, L0 ~50)"
echo
echo "Measured by \`tools/bench.d/40-sae.sh\` ($threads threads, tile $tile): \`dmica sae --threads $threads --tile $tile\`"
echo "on random N(0,1) activations and a tools/make-sae SAE, with every statistic (FVU, MSE, cosine, L0 histogram,"
echo "per-feature moments, linear predictability); its tokens/s is the pass as dmica reports it (reading x and writing"
echo "the residual included, loading the SAE not). The encode GEMM alone (${tile}x24576x768, same OpenBLAS, same threads)"
echo "is the ceiling for the whole pass: timed over the same number of tiles as the pass, both as one multithreaded"
echo "cblas_sgemm a tile and as single-threaded SGEMMs on 512-column panels over OpenMP threads (as dmica runs it), the"
echo "better counting; in tokens/s = GFLOP/s / (2·768·24576 = 75.5 MFLOP a token). The machine is shared and rates move"
echo "between runs, so the GEMM is measured just before each of $repeat dmica runs and each side's best is compared."
echo "On CPUs with AVX-512F dmica itself encodes with dm_sgemm on W_enc packed at load (operators/kernels/sgemm.c: one level of"
echo "Strassen; docs/gpt2.md), faster than that OpenBLAS GEMM, so the pass can pass 100% of it."
echo
echo "**Target** (issue 4, item 6): SAE tokens/s end to end with statistics at least 80% of the GEMM's; peak memory"
echo "independent of the number of tokens."
echo
echo "| tokens | GEMM tokens/s (best way) | SAE tokens/s (pass) | % of GEMM | target 80% | s with loading | mean L0 | peak RSS |"
echo "|---|---|---|---|---|---|---|---|"
rows=$tmp/rows
: > "$rows"
for n in $tokens; do
    echo "bench sae: $n tokens" >&2
    "$PY" - "$DMICA" "$tmp" "$n" "$tile" "$threads" "$tmp/gemm" "$repeat" "$rows" <<'P'
import re, resource, subprocess, sys, json, os
dmica, tmp, n, tile, threads, gexe, repeat, rows = sys.argv[1:]
env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
best_gemm, how, best_sae, load = 0.0, "", 0.0, 0.0
for _ in range(int(repeat)):
    g = subprocess.run([gexe, tile, threads, n], capture_output=True, text=True, env=env, check=True).stdout.split()
    if float(g[0]) > best_gemm:
        best_gemm, how = float(g[0]), g[1]
    p = subprocess.run([dmica, "sae", "--sae", tmp + "/sae", "--in", "%s/x%s.npy" % (tmp, n), "--residual",
                        tmp + "/e.npy", "--stats", tmp + "/st.json", "--tile", tile, "--threads", threads],
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    m = re.search(r"in ([0-9.]+) s \(([0-9.]+) tokens/s; ([0-9.]+) s with loading", p.stderr)
    if float(m.group(2)) > best_sae:
        best_sae, load = float(m.group(2)), float(m.group(3))
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child: a dmica run
gemm = best_gemm * 1e9 / (2 * 768 * 24576)
st = json.load(open(tmp + "/st.json"))
pct = 100 * best_sae / gemm
print("| %s | %.0f (%s) | %.0f | %.0f%% | %s | %.2f | %.1f | %.0f MiB |" % (n, gemm, how, best_sae, pct,
      "met" if pct >= 80 else "**not met**", load, st["mean_l0"], rss))
with open(rows, "a") as f:
    f.write("%s %.1f %.0f\n" % (n, pct, rss))
P
done
echo
"$PY" - "$rows" <<'P'
import sys
rows = [l.split() for l in open(sys.argv[1])]
met = all(float(r[1]) >= 80 for r in rows)
rss = [float(r[2]) for r in rows]
print("Throughput target %s: %s of the GEMM rate at %s tokens." % (
    "met" if met else "NOT met", ", ".join("%s%%" % r[1] for r in rows), ", ".join(r[0] for r in rows)))
print("Peak RSS %s MiB over %s tokens: %s." % (" and ".join("%.0f" % x for x in rss), " and ".join(r[0] for r in rows),
      "independent of the token count" if max(rss) - min(rss) < 0.1 * min(rss) + 16 else "it GROWS with the tokens"))
P
echo
echo "Peak RSS is the weights (2 x 75 MB, and W_enc packed for dm_sgemm: 132 MB), a panel of pre-activations per thread (tile x 512 floats), the"
echo "statistics and the read/write buffers (a chunk of rows): none of it grows with the token count."
