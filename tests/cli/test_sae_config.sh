# The SAE's cfg.json, read once by an sae_config node and handed to the text,
# gpt2 and sae nodes on DAG edges, sets what the model stage does unless the
# pipeline says otherwise: residual centring
# (model_from_pretrained_kwargs.center_writing_weights), BOS and context size;
# overrides are kept and said on stderr.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
M=$ROOT/tests/golden/gpt2/c64h4          # a 2-layer, 64-wide random GPT-2 (vocabulary 101)
python3 -c "
import numpy as np
np.save('windows.npy', np.random.default_rng(0).integers(0, 100, size=(6, 16)).astype(np.int32))
"
python3 "$ROOT/tools/make-sae" --d-in 64 --d-sae 128 --hook blocks.1.hook_resid_pre --out sae_centred >/dev/null
python3 "$ROOT/tools/make-sae" --d-in 64 --d-sae 128 --hook blocks.1.hook_resid_pre --no-center --out sae_raw >/dev/null
pipeline() {   # $1: SAE folder, $2: extra gpt2 params
cat > p.yaml <<Y
name: saecfg
nodes:
  sae_config: {op: sae_config, params: {path: $1}}
  text: {op: text, inputs: {sae: sae_config}, params: {path: windows.npy, format: npy, context: 16}}
  lm:
    op: gpt2
    inputs: {tokens: text.windows, sae: sae_config}
    params: {model: $M, hooks: blocks.1.hook_resid_pre $2}
  sae:
    op: sae
    inputs: {x: lm.blocks.1.hook_resid_pre, sae: sae_config}
    params: {hook: blocks.1.hook_resid_pre}
  acts: {op: npy_sink, inputs: {x: lm.blocks.1.hook_resid_pre}, params: {file: acts.npy}}
Y
}
row_means() { python3 -c "import numpy as np; print(float(np.abs(np.load('$1').mean(1)).max()))"; }

pipeline sae_centred ""
expect_ok $DMICA run p.yaml --out c
err_has "residual centring on (from the SAE's cfg.json"
err_has "context 16 overrides the SAE's cfg.json (context_size 128)"
[ "$(python3 -c "print($(row_means c/acts.npy) < 1e-5)")" = True ] || fail "activations should be centred"

pipeline sae_raw ""
expect_ok $DMICA run p.yaml --out r
err_has "residual centring off (from the SAE's cfg.json"
[ "$(python3 -c "print($(row_means r/acts.npy) > 1e-3)")" = True ] || fail "activations should not be centred"

# an explicit setting wins, and says so
pipeline sae_raw ", center: true"
expect_ok $DMICA run p.yaml --out o
err_has "center: true overrides the SAE's cfg.json (center_writing_weights: false)"
cmp c/acts.npy o/acts.npy || fail "center: true should give the centred activations"
expect_fail $DMICA run p.yaml --set lm.center=sometimes
err_has "center must be auto, true or false"

# the SAE is an edge of the DAG: the plan shows it, and a change to its cfg.json
# makes every node that follows it stale (the cache key chain covers it)
pipeline sae_raw ""
expect_ok $DMICA plan p.yaml
out_has "<- sae_config.sae"
expect_ok $DMICA run p.yaml --out r2
if grep -q "ran (" err.txt; then cat err.txt; fail "an unchanged pipeline should come from the cache"; fi
sed -i 's/"context_size": 128/"context_size": 64/' sae_raw/cfg.json
expect_ok $DMICA plan p.yaml
for node in sae_config text lm sae acts; do
    grep -q "^  $node .*stale" out.txt || { cat out.txt; fail "$node should be stale after the SAE's cfg.json changed"; }
done
# the record is checked: a tensor that is not an SAE is refused by name
cat > q.yaml <<Y
name: notsae
nodes:
  atoms: {op: planted_sae}
  text: {op: text, inputs: {sae: atoms.dictionary}, params: {path: windows.npy, format: npy, context: 16}}
Y
expect_fail $DMICA plan q.yaml
err_has "input 'sae' is not an SAE"
# one SAE per sae node
pipeline sae_raw ""
expect_fail $DMICA plan p.yaml --set sae.sae=sae_raw
err_has "the SAE is given twice"
# cfg.json values are type-checked, each message naming the file and key ("abc" was
# read as the default 128; 42 printed '?')
cfg_edit() {   # $1: key, $2: JSON value; writes sae_bad from sae_raw
    rm -rf sae_bad && cp -r sae_raw sae_bad
    python3 -c "
import json, sys
c = json.load(open('sae_bad/cfg.json')); c[sys.argv[1]] = json.loads(sys.argv[2])
json.dump(c, open('sae_bad/cfg.json', 'w'))
" "$1" "$2"
}
pipeline sae_bad ""
cfg_edit context_size '"abc"'
expect_fail $DMICA plan p.yaml
err_has "sae_bad/cfg.json: key context_size must be a positive integer (tokens per window), not \"abc\""
cfg_edit context_size 0
expect_fail $DMICA plan p.yaml; err_has "key context_size must be a positive integer"
cfg_edit context_size 12.5
expect_fail $DMICA plan p.yaml; err_has "key context_size must be a positive integer"
cfg_edit prepend_bos '"yes"'
expect_fail $DMICA plan p.yaml
err_has "sae_bad/cfg.json: key prepend_bos must be true or false (a boolean), not \"yes\""
cfg_edit normalize_activations 42
expect_fail $DMICA plan p.yaml
err_has "sae_bad/cfg.json: key normalize_activations must be a string, one of none, expected_average_only_in"
err_has "not 42"
cfg_edit architecture '["topk"]'
expect_fail $DMICA plan p.yaml; err_has "sae_bad/cfg.json: key architecture must be a string, not [\"topk\"]"
cfg_edit hook_point 6
expect_fail $DMICA plan p.yaml; err_has "sae_bad/cfg.json: key hook_point must be a string, not 6"
cfg_edit context_size null   # null is absent, as SAELens writes it
expect_ok $DMICA plan p.yaml
echo ok
