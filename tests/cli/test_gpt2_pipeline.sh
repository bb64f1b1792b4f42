# text -> gpt2 -> npy_sink: several hooks from one pass equal `dmica activations`
# on the same tokens and the float64 numpy reference (tools/gpt2_reference.py,
# 1e-4 relative), centred and raw; rows are window*T + position; real text
# through the real tokenizer into a model with GPT-2's vocabulary; clear errors
# for ids beyond the vocabulary, windows longer than n_positions, a bad hook,
# and a memory budget too small for the weights.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy not available"; exit 77; }
G=$ROOT/tests/golden/gpt2/c64h4   # vocab 101, 2 layers, n_positions 32, d_model 64
TOK=$ROOT/tests/data/gpt2-tokenizer
HOOKS="hook_embed,blocks.0.hook_attn_out,blocks.1.hook_resid_pre,blocks.1.hook_resid_post"

# tokens: 5 windows of 12 ids below 101, so that batch 2 leaves a partial batch
python3 -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(3).integers(0, 101, size=(5, 12)).astype(np.int64))"
cat > p.yaml <<Y
name: gpt2test
nodes:
  src: {op: text, params: {path: tokens.npy, context: 12}}
  lm:
    op: gpt2
    inputs: {tokens: src}
    params: {model: $G, hooks: "$HOOKS", batch: 2}
  s0: {op: npy_sink, inputs: {x: lm.hook_embed}, params: {file: hook_embed.npy}}
  s1: {op: npy_sink, inputs: {x: lm.blocks.0.hook_attn_out}, params: {file: blocks.0.hook_attn_out.npy}}
  s2: {op: npy_sink, inputs: {x: lm.blocks.1.hook_resid_pre}, params: {file: blocks.1.hook_resid_pre.npy}}
  s3: {op: npy_sink, inputs: {x: lm.blocks.1.hook_resid_post}, params: {file: blocks.1.hook_resid_post.npy}}
Y
# check DIR [--no-center]: every hook in DIR equals activations and the reference
check() {
    dir=$1; shift
    for h in $(echo $HOOKS | tr , ' '); do
        expect_ok $DMICA activations --model $G --hook $h --tokens tokens.npy --out act.npy "$@"
        python3 "$ROOT/tools/gpt2_reference.py" --model $G --tokens tokens.npy --hook $h --out ref.npy "$@" \
            || fail "reference $h"
        python3 -c "
import sys, numpy as np
x, a, r = np.load('$dir/$h.npy'), np.load('act.npy'), np.load('ref.npy')
assert x.shape == (60, 64) and x.dtype == np.float32, x.shape
if np.abs(x - a).max() > 1e-6 * np.abs(a).max():
    sys.exit('$h: pipeline differs from dmica activations by %g' % np.abs(x - a).max())
err = np.abs(x - r).max() / np.abs(r).max()
if err > 1e-4:
    sys.exit('$h: relative error %g against the reference' % err)" || fail "hook $h ($*)"
    done
}
expect_ok $DMICA run p.yaml --out c
# one pass: the model ran once for four hooks (one gpt2 line in the plan)
[ "$(grep -c '^  lm .*ran (' err.txt)" = 1 ] || { cat err.txt; fail "gpt2 should run once"; }
check c
expect_ok $DMICA run p.yaml --out r --set lm.center=false
check r --no-center
python3 -c "
import numpy as np
c, r = np.load('c/blocks.1.hook_resid_pre.npy'), np.load('r/blocks.1.hook_resid_pre.npy')
assert np.abs(c.mean(1)).max() < 1e-5, 'centred rows have mean 0'
assert np.abs(r.mean(1)).max() > 1e-3, 'raw rows do not'
assert np.allclose(c, r - r.mean(1, keepdims=True), atol=1e-5)" || fail "centring"

# ---- real text, real tokenizer, a model with GPT-2's vocabulary
python3 "$ROOT/tools/make-gpt2" --n-embd 32 --n-layer 2 --n-head 2 --n-positions 32 --vocab-size 50257 \
    --seed 5 --out m50k >/dev/null || fail "make-gpt2"
mkdir docs
python3 -c "
for i in range(4):
    open('docs/d%d.txt' % i, 'w').write('Document %d. ' % i + 'The residual stream carries features; the SAE reads them. ' * (i + 1))"
cat > t.yaml <<Y
name: realtext
nodes:
  src: {op: text, params: {path: docs, tokenizer: $TOK, context: 16, mode: pack}}
  lm: {op: gpt2, inputs: {tokens: src}, params: {model: m50k, hooks: blocks.1.hook_resid_pre}}
  w: {op: npy_sink, inputs: {x: src}, params: {file: windows.npy}}
  a: {op: npy_sink, inputs: {x: lm.blocks.1.hook_resid_pre}, params: {file: acts.npy}}
Y
expect_ok $DMICA run t.yaml --out t
python3 -c "
import numpy as np
w = np.load('t/windows.npy'); np.save('wtok.npy', w.astype(np.int32))
assert w.shape[1] == 16 and (w[:, 0] == 50256).all() and w.max() > 1000, w" || fail "windows"
expect_ok $DMICA activations --model m50k --hook blocks.1.hook_resid_pre --tokens wtok.npy --out ta.npy
python3 -c "
import numpy as np
x, a = np.load('t/acts.npy'), np.load('ta.npy')
assert x.shape == a.shape == (np.load('t/windows.npy').shape[0] * 16, 32), (x.shape, a.shape)
assert np.abs(x - a).max() <= 1e-6 * np.abs(a).max()" || fail "real text activations"

# ---- errors
expect_fail $DMICA run t.yaml --set lm.model=$G
err_has "not below vocab_size 101"
expect_fail $DMICA run t.yaml --set src.context=64
err_has "n_positions 32"
grep -v "^  w:" t.yaml | sed 's/lm.blocks.1.hook_resid_pre/lm/' > e.yaml   # the sink reads lm's one output
expect_fail $DMICA run e.yaml --set lm.hooks=blocks.9.hook_resid_pre
err_has "the model has 2 layers"
expect_fail $DMICA run e.yaml --set lm.hooks=blocks.1.hook_nothing
err_has "unknown hook 'blocks.1.hook_nothing'"
expect_fail $DMICA run t.yaml --set lm.batch=200000 --memory 256M
err_has "memory budget"
# a broken model folder: the run stops before any output, naming the file
# (every variant of tensors and config is in tests/test_gpt2.c; these go through
# the operator). variant.py OUT CHANGE: a copy of $G with one change.
cat > variant.py <<'P'
import json, os, shutil, struct, sys
import numpy as np
src, out, change = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.copytree(src, out)
raw = open(f"{src}/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
hdr.pop("__metadata__", None)
t = {k: np.frombuffer(raw, np.float32, (v["data_offsets"][1] - v["data_offsets"][0]) // 4, 8 + n + v["data_offsets"][0])
     .reshape(v["shape"]) for k, v in hdr.items()}
cfg = json.load(open(f"{src}/config.json"))
if change == "missing":
    del t["h.1.mlp.c_proj.weight"]
elif change == "extra":
    t["h.0.attn.rotary.weight"] = np.zeros(4, np.float32)
elif change == "shape":
    t["h.0.mlp.c_fc.weight"] = t["h.0.mlp.c_fc.weight"][:, :-1]
elif change == "config":
    cfg["n_layer"] = 3
cut = 100 if change == "offsets" else 0
hdr, data, off = {}, b"", 0
for k, a in t.items():
    b = np.ascontiguousarray(a).tobytes()
    hdr[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
    data += b; off += len(b)
h = json.dumps(hdr).encode()
open(f"{out}/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data[:len(data) - cut])
json.dump(cfg, open(f"{out}/config.json", "w"))
P
# bad_model CHANGE MESSAGE
bad_model() {
    python3 variant.py $G bad_$1 $1 || fail "variant $1"
    expect_fail $DMICA run p.yaml --set lm.model=bad_$1 --out bad
    err_has "bad_$1/"
    err_has "$2"
    [ ! -e bad ] || fail "a failed run ($1) left its --out folder"
}
bad_model missing "missing tensor h.1.mlp.c_proj.weight"
bad_model extra "unexpected tensor h.0.attn.rotary.weight"
bad_model shape "tensor h.0.mlp.c_fc.weight has shape [64, 255]"
bad_model offsets "model.safetensors: truncated: tensor wte.weight data_offsets"
bad_model config "missing tensor h.2."
cache_consistent
echo ok
