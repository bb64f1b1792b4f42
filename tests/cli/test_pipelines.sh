# The shipped pipelines are valid: `dmica plan` checks every operator,
# parameter, connection and shape before any work, here against stand-in files
# with the real shapes (a GPT-2 small config, SAEs with d_in 768 and few
# features, a Gemma 2 2B config and a Gemma Scope params.npz with d_in 2304,
# a one-line corpus). Also: an SAE whose d_in is not the hook's width
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
# pipelines/gemma-2-2b-gemmascope-l12.yaml, against stand-ins with Gemma 2 2B's
# shapes: its config.json, an index naming one (empty) shard, a tokenizer.json of
# Gemma's structure (BPE with byte fallback, "▁" for spaces, <bos>), and a
# params.npz at the release path with d_in 2304 and 16 features.
G=models/gemma-2-2b S=models/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82
mkdir -p $G $S
cat > $G/config.json <<'J'
{"architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
 "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
 "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
 "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
 "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
 "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
 "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
 "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": true, "vocab_size": 256000}
J
echo '{"metadata": {"total_size": 0}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}}' \
    > $G/model.safetensors.index.json
: > $G/model-00001-of-00001.safetensors
python3 - $G/tokenizer.json $S/params.npz <<'P' || fail "gemma stand-ins"
import json, sys
import numpy as np
vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"] + ["<0x%02X>" % b for b in range(256)] + ["\u2581"])}
special = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
           for t, i in list(vocab.items())[:4]]
json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
           "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
           "pre_tokenizer": None,
           "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
                              "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
           "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                       {"type": "ByteFallback"}, {"type": "Fuse"}]},
           "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                     "vocab": vocab, "merges": []}}, open(sys.argv[1], "w"))
r = np.random.default_rng(0)
np.savez(sys.argv[2], W_enc=r.standard_normal((2304, 16)).astype(np.float32),
         W_dec=r.standard_normal((16, 2304)).astype(np.float32), b_enc=np.zeros(16, np.float32),
         b_dec=np.zeros(2304, np.float32), threshold=np.ones(16, np.float32))
P
GP=$ROOT/pipelines/gemma-2-2b-gemmascope-l12.yaml
[ "$(grep -v '^ *#' "$GP" | grep -c 'gemma-scope-2b-pt-res/layer_12')" = 1 ] || fail "the gemma pipeline should name its SAE once"
# its SAE side: the release path's hook is the one the sae node says
sae_path=$(grep -v '^ *#' "$GP" | grep -o 'models/gemma-scope-2b-pt-res/[^},]*')
sae_hook=$(grep -v '^ *#' "$GP" | grep -o 'params: {hook: [^}]*' | sed 's/.*hook: //')
[ "$sae_hook" = blocks.12.hook_resid_post ] || fail "the gemma pipeline's sae node reads '$sae_hook'"
python3 -c "import numpy as np; np.save('x2304.npy', np.ones((4, 2304), np.float32))"
cat > gs.yaml <<Y
name: gs
nodes:
  acts: {op: npy, params: {path: x2304.npy}}
  sae_config: {op: sae_config, params: {path: $sae_path}}
  sae: {op: sae, inputs: {x: acts, sae: sae_config}, params: {hook: $sae_hook}}
Y
expect_ok $DMICA plan gs.yaml
expect_fail $DMICA plan gs.yaml --set sae.hook=blocks.6.hook_resid_post
err_has "reads hook blocks.12.hook_resid_post"
# the whole pipeline plans: the text node reads Gemma's tokenizer.json, the model
# node Gemma 2's config and shard index, the sae node the release's params.npz
expect_ok $DMICA plan "$GP"
out_has "stale: never run"
out_has "disk: about "
for node in text gemma sae; do
    grep -q "^  $node .*sae_config.sae" out.txt || { cat out.txt; fail "$node should read the SAE from sae_config"; }
done
# the demo pipeline validates against its own stand-ins in `make demo`; here: an SAE of the wrong width
python3 "$ROOT/tools/make-sae" --d-in 512 --d-sae 16 --hook blocks.6.hook_resid_pre \
    --out models/gpt2-small-res-jb/blocks.6.hook_resid_pre >/dev/null
rm -f models/gpt2-small-res-jb/blocks.6.hook_resid_pre/sparsity.safetensors
expect_fail $DMICA plan "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml"
err_has "d_in 512"; err_has "768"
echo ok
