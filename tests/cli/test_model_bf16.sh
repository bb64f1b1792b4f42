# The `model` operator with weights bf16 (the linear layers and the embedding
# kept bf16, model.h's DM_WEIGHTS_BF16) end to end: text -> model -> npy_sink
# on a tiny GPT-2 (F32 weights, rounded to bf16 at load) and a tiny Gemma 2
# (BF16 weights), every output close to the weights f32 run of the same
# pipeline and not equal to it; the two runs have their own cache entries (the
# parameter is in the key); a bad value is refused by name.
# Allowance: each linear layer rounds its input (and GPT-2's F32 weights) to
# bf16, 2^-8 relative each; to first order these add along the path
# (tests/test_gpt2.c's gpt2_bf16_tol): 2 per linear layer, 4 of them per
# block, times 2^-8; the unit tests see under three quarters of that.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy not available"; exit 77; }
GPT2=$ROOT/tests/golden/gpt2/c64h4          # 2 layers, vocab 101, F32
GEMMA=$ROOT/tests/golden/gemma2/h32kv2-bf16 # 3 layers, vocab 96, BF16, sharded

python3 -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(4).integers(0, 96, size=(5, 12)).astype(np.int32))"
# pipeline MODEL WEIGHTS HOOK...: p-WEIGHTS.yaml writing each hook to HOOK.npy
pipeline() {
    m=$1 w=$2; shift 2
    {
        echo "name: bf16test"
        echo "nodes:"
        echo "  src: {op: text, params: {path: tokens.npy, context: 12}}"
        echo "  lm: {op: model, inputs: {tokens: src}, params: {model: $m, hooks: \"$(echo "$@" | tr ' ' ,)\", batch: 2, center: false, weights: $w}}"
        for h in "$@"; do
            echo "  s_$(echo $h | tr . _): {op: npy_sink, inputs: {x: lm.$h}, params: {file: $h.npy}}"
        done
    } > p-$w.yaml
}
# compare A B STAGES...: for each hook (name:stages), B's values within
# (2 stages + 1) 2^-8 of A's (relative to A's largest), and not equal
compare() {
    a=$1 b=$2; shift 2
    python3 - "$a" "$b" "$@" <<'PY' || fail "bf16 against f32 ($*)"
import sys, numpy as np
a, b = sys.argv[1], sys.argv[2]
for spec in sys.argv[3:]:
    h, stages = spec.split(':')
    x, y = np.load('%s/%s.npy' % (a, h)), np.load('%s/%s.npy' % (b, h))
    assert x.shape == y.shape and y.dtype == np.float32, (h, x.shape, y.shape)
    err = np.abs(x - y).max() / np.abs(x).max()
    tol = (2 * int(stages) + 1) * 2.0 ** -8
    print('%s: relative difference %.2g (allowed %.2g)' % (h, err, tol))
    if not (1e-5 < err <= tol):
        sys.exit('%s: bf16 differs from f32 by %g, expected within (1e-5, %g]' % (h, err, tol))
PY
}

for fam in gpt2 gemma; do
    if [ $fam = gpt2 ]; then M=$GPT2 L=2; else M=$GEMMA L=3; fi
    HOOKS="blocks.0.hook_attn_out blocks.1.hook_resid_post logits"
    pipeline $M f32 $HOOKS
    pipeline $M bf16 $HOOKS
    expect_ok $DMICA run p-f32.yaml --out f32-$fam --cache c
    expect_ok $DMICA run p-bf16.yaml --out bf16-$fam --cache c
    # its own entry: the model ran again (not taken from the f32 run's)
    grep -q '^  lm .*ran (' err.txt || { cat err.txt; fail "$fam: the bf16 run reused the f32 entry"; }
    compare f32-$fam bf16-$fam blocks.0.hook_attn_out:2 blocks.1.hook_resid_post:8 logits:$((4 * L + 1))
done

# a bad value, refused by name
pipeline $GPT2 f16 logits
expect_fail $DMICA run p-f16.yaml --out bad --cache c
err_has "weights must be f32 or bf16, not 'f16'"
cache_consistent c
