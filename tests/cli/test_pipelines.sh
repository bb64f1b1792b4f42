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
for p in gpt2-small-res-jb-l6 gpt2-small-res-jb-l6-100m gpt2-small-res-jb-layers; do
    expect_ok $DMICA plan "$ROOT/pipelines/$p.yaml"
    out_has "stale: never run"
    out_has "disk: about "
done
grep -q "report_11" out.txt || fail "the layers pipeline lacks layer 11"
# the disk each l6 pipeline needs (issue 12): the plan's 1M tokens with x and e
# spilled in f32 and its arrays saved (under 20 GiB), and 100M tokens with GPT-2 and the SAE
# recomputed and only z spilled, as f16: under 100 GB (the shipped l6 would
# need about 680 GiB there)
gib() { sed -n 's/^disk: about \([0-9.]*\) \(TiB\|GiB\|MiB\).*/\1 \2/p' out.txt |
        awk '{print $2 == "MiB" ? $1 / 1024 : $2 == "TiB" ? $1 * 1024 : $1}'; }
expect_ok $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml"
awk -v g="$(gib)" 'BEGIN {exit !(g > 3 && g < 20)}' || fail "l6 at 1M tokens: $(grep disk: out.txt)"
expect_ok $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-l6-100m.yaml"
awk -v g="$(gib)" 'BEGIN {exit !(g > 15 && g * 1.073741824 < 100)}' || fail "l6-100m: $(grep disk: out.txt)"
expect_ok $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml" --set text.max_tokens=100000000
awk -v g="$(gib)" 'BEGIN {exit !(g > 500)}' || fail "l6 at 100M tokens: $(grep disk: out.txt)"
# The layers pipeline is one template; expanded, it is exactly the 92 nodes it
# spelled out before (tests/data/gpt2-small-res-jb-layers-spelled.yaml, the
# file before templates): the same keys and inputs in the plan, and the same
# operators, parameters, inputs and publish prefixes declared.
expect_ok $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-layers.yaml"
tail -n +2 out.txt | grep -v '^disk:' > plan_template.txt
[ "$(wc -l < plan_template.txt)" -eq 92 ] || fail "the layers pipeline has $(wc -l < plan_template.txt) nodes, not 92"
expect_ok $DMICA plan "$ROOT/tests/data/gpt2-small-res-jb-layers-spelled.yaml"
tail -n +2 out.txt | grep -v '^disk:' | diff plan_template.txt - || fail "the template's plan differs from the spelled-out pipeline's"
expect_ok $DMICA plan --expanded "$ROOT/pipelines/gpt2-small-res-jb-layers.yaml"
cp out.txt expanded.yaml
grep -q "^  # .*gpt2-small-res-jb-layers.yaml:[0-9]* (layer L=6)" expanded.yaml || fail "--expanded does not say which row made a node"
expect_ok $DMICA plan --expanded "$ROOT/tests/data/gpt2-small-res-jb-layers-spelled.yaml"
grep -v '^ *#' expanded.yaml > decl_template.txt
grep -v '^ *#' out.txt | diff decl_template.txt - || fail "the template declares other nodes than the spelled-out pipeline"
# --expanded writes a pipeline that reads back to the same plan
expect_ok $DMICA plan expanded.yaml
tail -n +2 out.txt | grep -v '^disk:' | diff plan_template.txt - || fail "the expanded YAML plans differently"
# --set reaches one expansion: ica_6 and what it feeds change, layer 0 does not
expect_ok $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-layers.yaml" --set ica_6.seed=7
tail -n +2 out.txt | grep -v '^disk:' > plan_set.txt
key() { awk -v n="$1" '$1 == n {print $3}' "$2"; }
for n in ica_6 compare_6 report_6; do
    [ "$(key $n plan_set.txt)" != "$(key $n plan_template.txt)" ] || fail "--set ica_6.seed left $n's key"
done
for n in ica_0 report_0 sae_6 pca_6; do
    [ "$(key $n plan_set.txt)" = "$(key $n plan_template.txt)" ] || fail "--set ica_6.seed changed $n's key"
done
[ -n "$(key ica_0 plan_set.txt)" ] || fail "no key for ica_0 in the plan"
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
