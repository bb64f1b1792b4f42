#!/bin/sh
# Gemma 2 through the pipeline (text -> model -> npy_sink) to
# blocks.12.hook_resid_post (Gemma Scope's layer 12 residual) on the
# Gemma-2-2B shape (random BF16 weights from tools/make-gemma2: 26 layers,
# hidden 2304, 8 heads of 256, 4 key-value heads, MLP 9216, vocabulary 256000,
# about 5.2 GB on disk), with weights f32 (converted to float32 at load: 13
# blocks and the embedding, 6.4 GB, and 7.1 GB more packed for dm_sgemm on
# cpu-avx512) and weights bf16 (the linear layers and the embedding kept bf16,
# packed once for dm_bgemm: 3.2 GB). For each: tokens/s of the forward pass (a
# run on every window less a 1-window run, which leaves out loading and
# packing: WINDOWS-1 windows' work) and the peak resident memory of the full
# run (/usr/bin/time). One cache for all runs: the first run hashes the model
# folder for the cache key (XXH3 over 5.2 GB), and later runs take that hash
# from the cache's filehash memo (keyed by path, device, inode, size and
# mtime: io/fs.c); the hashing time is the first 1-window bf16 run less the
# same run at the end.
# Needs about 14 GB of free memory and 6 GB of disk. Markdown on stdout,
# progress on stderr. Several minutes on 2 cores; BENCH_GEMMA2_MODEL=DIR reuses
# a folder made before; BENCH_GEMMA2_WEIGHTS="bf16" (or "f32") measures one.
set -eu
: "${ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${DMICA:=$ROOT/bin/dmica}"
SYSPY=${PY:-/usr/bin/python3}
THREADS=${BENCH_THREADS:-$(nproc)}
WINDOWS=${BENCH_GEMMA2_WINDOWS:-16}  # windows of 128 tokens
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmica-bench-gemma2.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

MODEL=${BENCH_GEMMA2_MODEL:-}
if [ -z "$MODEL" ]; then
    echo "35-gemma2: making the Gemma-2-2B-shape model (5.2 GB)" >&2
    $SYSPY "$ROOT/tools/make-gemma2" --seed 1 --out g2b >&2
    MODEL=$tmp/g2b
fi
$SYSPY -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(0).integers(0, 256000, size=($WINDOWS, 128)).astype(np.int32))
np.save('one.npy', np.load('tokens.npy')[:1])"
for w in f32 bf16; do
    cat > p-$w.yaml <<Y
name: bench-gemma2-$w
nodes:
  src: {op: text, params: {path: tokens.npy, context: 128}}
  lm: {op: model, inputs: {tokens: src}, params: {model: $MODEL, hooks: blocks.12.hook_resid_post, batch: $WINDOWS, weights: $w}}
  acts: {op: npy_sink, inputs: {x: lm}, params: {file: acts.npy}}
Y
    sed 's/tokens.npy/one.npy/' p-$w.yaml > p1-$w.yaml
done

now() { date +%s.%N; }
# run PIPELINE LOG [time -v output]: seconds of a dmica run (lm rerun)
run() {
    t0=$(now)
    if [ $# -gt 2 ]; then
        /usr/bin/time -v -o "$3" $DMICA run "$1" --threads "$THREADS" --memory 24G --cache c --out out --force lm \
            >/dev/null 2>"$2" || { cat "$2" "$3" >&2; exit 1; }
    else
        $DMICA run "$1" --threads "$THREADS" --memory 24G --cache c --out out --force lm >/dev/null 2>"$2" ||
            { cat "$2" >&2; exit 1; }
    fi
    awk "BEGIN { printf \"%.1f\", $(now) - $t0 }"
}
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
echo "35-gemma2: hashing the folder (a 1-window bf16 run; again at the end)" >&2
FIRST=$(run p1-bf16.yaml first.log)
ONE_f32=- ONE_bf16=- TOKS_f32=- TOKS_bf16=- RSS_f32=- RSS_bf16=-
for w in ${BENCH_GEMMA2_WEIGHTS:-bf16 f32}; do
    echo "35-gemma2: weights $w: 1 window, then $WINDOWS windows of 128 tokens" >&2
    ONE=$(run p1-$w.yaml one-$w.log)
    ALL=$(run p-$w.yaml all-$w.log time-$w.txt)
    eval "ONE_$w=$ONE"
    eval "TOKS_$w=$(awk "BEGIN { printf \"%.1f\", ($WINDOWS - 1) * 128 / ($ALL - $ONE) }")"
    eval "RSS_$w=$(awk '/Maximum resident set size/ { printf "%.2f", $NF / 1048576 }' time-$w.txt)"
    grep -i "bf16\|widened" all-$w.log >&2 || true
done
ONE=$(run p1-bf16.yaml again.log)
HASH=$(awk "BEGIN { printf \"%.1f\", $FIRST - $ONE }")
# per token: 2 FLOP per multiply-add of the 13 blocks' linear layers (q, k, v,
# o: 2 C (Q + KV); gate, up, down: 3 C I) and of attention (QK^T and AV over
# the (T+1)/2 keys a query sees on average, 8 heads of 256)
GFLOP=$(awk 'BEGIN { C=2304; Q=2048; KV=1024; I=9216; T=128; printf "%.2f", 13 * 2 * (2*C*(Q+KV) + 3*C*I + 2*Q*(T+1)/2) / 1e9 }')
BF16=$(if grep -q avx512_bf16 /proc/cpuinfo; then echo "AVX-512 BF16: dm_bgemm's VDPBF16PS kernel"; else
    echo "no AVX-512 BF16 on this CPU: bf16 widened to float32 (the FP32 path)"; fi)

cat <<EOF
## Gemma 2 2B shape: tokens/s to blocks.12.hook_resid_post, FP32 and BF16 (issue 15)

Command: \`sh tools/bench.d/35-gemma2.sh\` (part of \`make bench\`). \`tools/make-gemma2 --out g2b\` (random
BF16 weights, the real shape, sharded with model.safetensors.index.json), then \`dmica run p.yaml --threads $THREADS\`
with \`text\` (a [$WINDOWS, 128] int32 .npy) -> \`model\` (hooks blocks.12.hook_resid_post, batch $WINDOWS,
weights f32: BF16 converted to float32 at load and packed for dm_sgemm; weights bf16: kept bf16, packed once for
dm_bgemm, float32 sums; $BF16) -> \`npy_sink\`. Tokens/s: the $WINDOWS-window run less a 1-window run
(loading, converting and packing the 13 blocks and the embedding), over $((WINDOWS - 1)) windows' tokens. Peak
memory: the $WINDOWS-window run's maximum resident set (/usr/bin/time -v). FLOP: 2 per multiply-add of the linear
layers and causal attention of 13 blocks, $GFLOP GFLOP per token. Load average at the start: $LOAD0.

| measure | FP32 | BF16 |
|---|---|---|
| dmica Gemma 2 (2B shape) through the pipeline, 13 blocks, B=$WINDOWS T=128, $THREADS threads | $TOKS_f32 tokens/s | $TOKS_bf16 tokens/s |
| the 1-window run: loading 13 blocks and the embedding, converting or packing | $ONE_f32 s | $ONE_bf16 s |
| peak resident memory of the $WINDOWS-window run | $RSS_f32 GiB | $RSS_bf16 GiB |

The first run with a new cache also hashes the model folder for the cache key (XXH3 over 5.2 GB): $HASH s here;
later runs take the hash from the cache's filehash memo (keyed by path, device, inode, size and mtime, io/fs.c).
EOF
