#!/bin/sh
# Gemma 2 through the pipeline (text -> gpt2 -> npy_sink) to
# blocks.12.hook_resid_post (Gemma Scope's layer 12 residual) on the
# Gemma-2-2B shape (random BF16 weights from tools/make-gemma2: 26 layers,
# hidden 2304, 8 heads of 256, 4 key-value heads, MLP 9216, vocabulary 256000,
# about 5.2 GB on disk), weights converted to float32 at load (13 blocks and
# the embedding: about 6.4 GB, and as much again packed for dm_sgemm on
# cpu-avx512). Tokens/s of the forward pass (the run on every window less a
# 1-window run, which leaves out loading and packing) and the peak resident
# memory of the full run (/usr/bin/time). Needs about 14 GB of free memory
# and 6 GB of disk. Markdown on stdout, progress on stderr. A few minutes on 2
# cores; BENCH_GEMMA2_MODEL=DIR reuses a folder made before.
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
cat > p.yaml <<Y
name: bench-gemma2
nodes:
  src: {op: text, params: {path: tokens.npy, context: 128}}
  lm: {op: model, inputs: {tokens: src}, params: {model: $MODEL, hooks: blocks.12.hook_resid_post, batch: $WINDOWS, weights: f32}}
  acts: {op: npy_sink, inputs: {x: lm}, params: {file: acts.npy}}
Y
sed 's/tokens.npy/one.npy/' p.yaml > p1.yaml

echo "35-gemma2: $WINDOWS windows of 128 tokens, then 1" >&2
t0=$(date +%s.%N)
/usr/bin/time -v -o time.txt $DMICA run p.yaml --threads "$THREADS" --memory 24G --cache c0 --out out >/dev/null 2>run.log ||
    { cat run.log time.txt >&2; exit 1; }
t1=$(date +%s.%N)
$DMICA run p1.yaml --threads "$THREADS" --memory 24G --cache c1 --out out1 >/dev/null 2>run1.log || { cat run1.log >&2; exit 1; }
t2=$(date +%s.%N)
TOKS=$(awk "BEGIN { printf \"%.1f\", $WINDOWS * 128 / (($t1 - $t0) - ($t2 - $t1)) }")
LOAD=$(awk "BEGIN { printf \"%.1f\", $t2 - $t1 }")
RSS=$(awk '/Maximum resident set size/ { printf "%.2f", $NF / 1048576 }' time.txt)
# per token: 2 FLOP per multiply-add of the 13 blocks' linear layers (q, k, v,
# o: 2 C (Q + KV); gate, up, down: 3 C I) and of attention (QK^T and AV over
# the (T+1)/2 keys a query sees on average, 8 heads of 256)
GFLOP=$(awk 'BEGIN { C=2304; Q=2048; KV=1024; I=9216; T=128; printf "%.2f", 13 * 2 * (2*C*(Q+KV) + 3*C*I + 2*Q*(T+1)/2) / 1e9 }')

cat <<EOF
## Gemma 2 2B shape: tokens/s to blocks.12.hook_resid_post, FP32 (issue 15)

Command: \`sh tools/bench.d/35-gemma2.sh\` (part of \`make bench\`). \`tools/make-gemma2 --out g2b\` (random
BF16 weights, the real shape, sharded with model.safetensors.index.json), then \`dmica run p.yaml --threads $THREADS\`
with \`text\` (a [$WINDOWS, 128] int32 .npy) -> \`model\` (hooks blocks.12.hook_resid_post, batch $WINDOWS,
weights f32: BF16 converted to float32 at load) -> \`npy_sink\`; a 1-window run is subtracted to leave out loading,
transposing and packing the 13 blocks. Peak memory: the whole run's maximum resident set (/usr/bin/time -v).
FLOP: 2 per multiply-add of the linear layers and causal attention of 13 blocks, $GFLOP GFLOP per token.
BF16 weights kept BF16 (dm_bgemm) and the CUDA backend are not measured: Gemma 2 has neither yet.

| measure | value |
|---|---|
| dmica Gemma 2 (2B shape) through the pipeline, 13 blocks, B=$WINDOWS T=128, FP32, $THREADS threads | $TOKS tokens/s |
| the 1-window run: the cache key hashing the folder (XXH3 over 5.2 GB), loading 13 blocks and the embedding, converting, packing | $LOAD s |
| peak resident memory of the full run | $RSS GiB |
EOF
