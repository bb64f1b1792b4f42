#!/bin/sh
# Causal tests (issue 14): the speed of the ablation study, in ablations x
# tokens per second, against the compute each needs: the blocks after the hook
# and the unembedding, per token (GPT-2 124M shape, random weights, the hook
# blocks.6.hook_resid_pre, a 768 x 24576 SAE). A small study, with k ICA
# components and nulls of each kind per component, runs in a pipeline on
# CAUSAL_TOKENS tokens; the causal node's own seconds count. Env: CAUSAL_TOKENS
# (1024), CAUSAL_K (4), CAUSAL_NULLS (2).
set -eu
: "${ROOT:=$(cd "$(dirname "$0")/../.." && pwd)}" "${DMICA:=$ROOT/bin/dmica}" "${PY:=/usr/bin/python3}"
N=${CAUSAL_TOKENS:-1024}
K=${CAUSAL_K:-4}
NULLS=${CAUSAL_NULLS:-2}
tmp=$(mktemp -d "${BENCH_DIR:-/tmp}/dmica-causal.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
echo "bench causal: models and tokens in $tmp" >&2
"$PY" "$ROOT/tools/make-gpt2" --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --out gpt2 >/dev/null
"$PY" "$ROOT/tools/make-sae" --d-in 768 --d-sae 24576 --l0 50 --hook blocks.6.hook_resid_pre --out sae >/dev/null
"$PY" -c "
import numpy as np
t = np.random.default_rng(1).integers(0, 50257, size=($N // 128, 128)).astype(np.int32)
t[:, 0] = 50256
np.save('tokens.npy', t)"
cat > p.yaml <<Y
nodes:
  sae_config: {op: sae_config, params: {path: sae}}
  text: {op: text, params: {path: tokens.npy, context: 128}}
  gpt2: {op: gpt2, inputs: {tokens: text.windows, sae: sae_config}, params: {model: gpt2, hooks: blocks.6.hook_resid_pre}}
  sae: {op: sae, inputs: {x: gpt2.blocks.6.hook_resid_pre, sae: sae_config}}
  cov: {op: covariance, inputs: {x: sae.residual}}
  pca: {op: pca, inputs: {covariance: cov.covariance}, params: {k: $K}}
  whiten: {op: project, inputs: {x: sae.residual, matrix: pca.whitening, mean: cov.mean}}
  ica: {op: fastica, inputs: {z: whiten}, params: {seeds: 1, max_iter: 200}}
  compare: {op: ica_compare, inputs: {unmixing: ica.unmixing, eigenvalues: pca.eigenvalues, components: pca.components, mean: cov.mean}}
  causal:
    op: causal
    inputs: {windows: text.windows, sae: sae_config, filters: compare.filters, mixing: compare.mixing,
             mean: cov.mean, eigenvalues: pca.eigenvalues, components: pca.components}
    params: {model: gpt2, tokens: $N, nulls: $NULLS}
Y
echo "bench causal: the study on $N tokens" >&2
"$DMICA" run p.yaml --out out --quiet --memory 6G 2>err.txt || { cat err.txt >&2; exit 1; }
"$PY" - "$N" "$K" "$NULLS" "$(nproc)" <<'P'
import json, sys
N, K, NULLS, cores = map(int, sys.argv[1:])
run = {n["node"]: n for n in json.load(open("out/run.json"))["nodes"]}
secs = run["causal"]["seconds"]
abl = 2 + K + 1 + 2 * NULLS * K + 1          # splices, components, all, nulls, PCA control
C, V, T = 768, 50257, 128
after = 6 * 2 * (C * 3 * C + C * C + 2 * C * 4 * C) + 6 * 2 * 2 * C * (T + 1) / 2  # blocks 6..11
unembed = 2 * C * V
runs = (abl + 1) * N                             # the clean run too
first = N * (after)                              # blocks 0..5 once per token (same FLOPs as 6..11)
flop = runs * (after + unembed) + first
print("## Causal tests: ablations x tokens per second (issue 14)\n")
print(f"`tools/bench.d/90-causal.sh` (CAUSAL_TOKENS={N}, CAUSAL_K={K}, CAUSAL_NULLS={NULLS}): a random GPT-2 124M, "
      f"the hook blocks.6.hook_resid_pre, a 768 x 24576 SAE, {K} ICA components, {NULLS} nulls of each kind per "
      f"component: {abl} ablations and the clean run on {N} tokens, {cores} cores.\n")
print("| what | value |")
print("|---|---|")
print(f"| the causal node's seconds | {secs:.1f} |")
print(f"| ablations x tokens per second | {abl * N / secs:,.0f} |")
print(f"| compute per ablated token (blocks 6..11 and the unembedding) | {(after + unembed) / 1e6:.0f} MFLOP |")
print(f"| compute done per second (with the clean run and blocks 0..5 once) | {flop / secs / 1e9:.0f} GFLOP/s |")
print(f"\nAt this rate the plan's default study (16384 tokens, k = 100, 100 nulls of each kind per component: "
      f"{2 + 100 + 1 + 2 * 100 * 100 + 1} ablations) would take "
      f"{(2 + 100 + 1 + 2 * 100 * 100 + 1) * 16384 / (abl * N / secs) / 3600:.0f} hours on this machine.")
P
