# The shipped pipelines are valid: `dmica plan` checks every operator,
# parameter, connection and shape before any work, here against stand-in files
# with the real shapes (a GPT-2 small config, SAEs with d_in 768 and few
# features, a one-line corpus). Also: an SAE whose d_in is not the hook's width
# is refused naming both.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
mkdir -p models/gpt2 data/openwebtext
cp "$ROOT"/tests/data/gpt2-tokenizer/* models/gpt2/
cat > models/gpt2/config.json <<'J'
{"activation_function": "gelu_new", "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024,
 "n_embd": 768, "n_head": 12, "n_inner": null, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}
J
: > models/gpt2/model.safetensors     # plan reads the config; weights load when the node runs
echo "Hello world." > data/openwebtext/a.txt
for L in 0 3 6 9 11; do
    python3 "$ROOT/tools/make-sae" --d-in 768 --d-sae 16 --hook blocks.$L.hook_resid_pre \
        --out models/gpt2-small-res-jb/blocks.$L.hook_resid_pre >/dev/null || fail "make-sae"
done
for p in gpt2-small-res-jb-l6 gpt2-small-res-jb-layers; do
    expect_ok $DMICA plan "$ROOT/pipelines/$p.yaml"
    out_has "stale: never run"
done
grep -q "report_11" out.txt || fail "the layers pipeline lacks layer 11"
# the SAE is named once, in sae_config, and reaches text, gpt2 and sae on edges
expect_ok $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml"
for node in text gpt2 sae; do
    grep -q "^  $node .*sae_config.sae" out.txt || { cat out.txt; fail "$node should read the SAE from sae_config"; }
done
[ "$(grep -v '^ *#' "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml" | grep -c 'gpt2-small-res-jb/blocks.6')" = 1 ] ||
    fail "the l6 pipeline should name its SAE folder once"
# the demo pipeline validates against its own stand-ins in `make demo`; here: an SAE of the wrong width
python3 "$ROOT/tools/make-sae" --d-in 512 --d-sae 16 --hook blocks.6.hook_resid_pre \
    --out models/gpt2-small-res-jb/blocks.6.hook_resid_pre >/dev/null
rm -f models/gpt2-small-res-jb/blocks.6.hook_resid_pre/sparsity.safetensors
expect_fail $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml"
err_has "d_in 512"; err_has "768"
echo ok
