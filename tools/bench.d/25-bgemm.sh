#!/bin/sh
# dm_bgemm (bf16 weights, AVX-512 BF16; operators/kernels/bgemm.c) against
# dm_sgemm (float32 weights; sgemm.c) on Gemma-2-2B's products at 512 tokens,
# on one thread and on BENCH_THREADS (all cores), beside the measured peak of
# VDPBF16PS and of VFMADD231PS (build/tools/bgemm-bench, tools/bgemm-bench.c).
# The unembedding (2304 x 256000) needs about 6.5 GB: 3.9 GiB of dm_sgemm's
# packed weights (Strassen's seven matrices: 7/4 of K N floats), 1.1 GiB of
# bf16, and C; BENCH_UNEMBED_N=25600 measures a tenth of it. On a shared
# machine other jobs take cores at random moments: BENCH_ROUNDS rounds (2),
# each figure the best of its rounds. Skips (no section) on a CPU without
# AVX-512 BF16. Markdown on stdout, progress on stderr. About 4 minutes on 2
# cores.
set -eu
: "${ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}"
THREADS=${BENCH_THREADS:-$(nproc)}
UNEMBED=${BENCH_UNEMBED_N:-256000}
ROUNDS=${BENCH_ROUNDS:-2}
BGEMM_BENCH=${BGEMM_BENCH:-$ROOT/build/tools/bgemm-bench}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmica-bench-bgemm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

: > "$tmp/t1.txt"; : > "$tmp/tn.txt"; : > "$tmp/err.txt"
r=0
while [ "$r" -lt "$ROUNDS" ]; do
    r=$((r + 1))
    for t in 1 "$THREADS"; do
        echo "25-bgemm: round $r of $ROUNDS, $t thread(s)" >&2
        f=$tmp/tn.txt; [ "$t" = 1 ] && f=$tmp/t1.txt
        rc=0
        "$BGEMM_BENCH" "$t" 512 "$UNEMBED" >> "$f" 2> "$tmp/e.txt" || rc=$?
        if [ "$rc" = 77 ]; then
            cat "$tmp/e.txt" >&2
            exit 0
        fi
        cat "$tmp/e.txt" >&2
        [ "$rc" = 0 ] || exit 1
        cat "$tmp/e.txt" >> "$tmp/err.txt"
    done
done

# the best of the rounds: per line name, the largest of each column
best() {
    awk '{ n = $1; if (!(n in seen)) { seen[n] = 1; order[++k] = n }
           for (i = 2; i <= NF; i++) if (!((n, i) in v) || $i > v[n, i]) v[n, i] = $i; nf[n] = NF }
         END { for (j = 1; j <= k; j++) { n = order[j]; s = n
               for (i = 2; i <= nf[n]; i++) s = s " " v[n, i]; print s } }' "$1"
}
best "$tmp/t1.txt" > "$tmp/b1.txt"
best "$tmp/tn.txt" > "$tmp/bn.txt"
read -r _ PB1 PF1 <<EOF
$(grep '^peak' "$tmp/b1.txt")
EOF
read -r _ PBT PFT <<EOF
$(grep '^peak' "$tmp/bn.txt")
EOF
CLOCK=$(awk "BEGIN { printf \"%.2f\", $PB1 / 64 }")
DIFF=$(sed -n 's/.*max relative difference \([^ ]*\).*/\1/p' "$tmp/err.txt" | sort -g | tail -1)

cat <<EOF
## bf16 weights: dm_bgemm against dm_sgemm at Gemma-2-2B's shapes (issue 15)

Command: \`sh tools/bench.d/25-bgemm.sh\` (part of \`make bench\`; \`build/tools/bgemm-bench THREADS 512 $UNEMBED\`,
tools/bgemm-bench.c). C (512, N) = A (512, K) @ W (K, N) at M = 512 tokens: \`dm_bgemm\` (W bf16 packed at load, A
rounded to bf16 as it is packed, VDPBF16PS, float32 sums; operators/kernels/bgemm.c) and \`dm_sgemm\` (W float32
packed at load, one level of Strassen: its rate is effective, 2MNK over time), each for at least 0.5 s after a
warm-up call, 2MNK FLOP. Shapes: q_proj 2304 x 2048, gate_proj and up_proj 2304 x 9216, down_proj 9216 x 2304,
the unembedding (the tied embedding) 2304 x $UNEMBED. Largest difference between the two results: $DIFF of max |C|
(A rounded to bf16: at most 2^-8 of each product). $ROUNDS rounds, each figure the best of its rounds.

Peak: Zen 4 runs a 512-bit operation as two 256-bit halves on its two 256-bit FMA pipes, so it issues one zmm
VDPBF16PS per cycle: 16 lanes x 2 bf16 multiply-adds x 2 FLOP = 64 FLOP per cycle per core, twice VFMADD231PS's 32
(16 float32 multiply-adds). Measured with loops of 12 independent VDPBF16PS (and VFMADD231PS) on zmm registers:
$PB1 GFLOP/s BF16 ($PF1 FP32) on one core, that is 64 FLOP x $CLOCK GHz; $PBT ($PFT) on $THREADS.

| product (K x N) | dm_bgemm, 1 thread | dm_sgemm, 1 thread | bgemm / sgemm | dm_bgemm / BF16 peak | dm_bgemm, $THREADS threads | dm_sgemm, $THREADS threads | bgemm / sgemm | dm_bgemm / BF16 peak | packed W: bf16 / float32 |
|---|---|---|---|---|---|---|---|---|---|
EOF
paste -d' ' "$tmp/b1.txt" "$tmp/bn.txt" | grep -v '^peak' | while read -r name K N b1 s1 mb mf _ _ _ bt st _ _; do
    awk -v n="$name" -v K="$K" -v N="$N" -v b1="$b1" -v s1="$s1" -v bt="$bt" -v st="$st" -v p1="$PB1" \
        -v pt="$PBT" -v mb="$mb" -v mf="$mf" 'BEGIN {
        printf "| %s (%d x %d) | %.0f GFLOP/s | %.0f GFLOP/s | %.2fx | %.0f%% | %.0f GFLOP/s | %.0f GFLOP/s | %.2fx | %.0f%% | %.0f / %.0f MiB |\n",
               n, K, N, b1, s1, b1 / s1, 100 * b1 / p1, bt, st, bt / st, 100 * bt / pt, mb, mf }'
done
