# Gemma Scope SAEs in their original release format (params.npz, no cfg.json):
# the sae_config and sae nodes and `dmica sae` on the golden case
# tests/golden/sae/gemmascope_npz against its float64 statistics; the hook from
# the release path (gemma-scope-2b-pt-res/layer_L/... reads
# blocks.L.hook_resid_post) or from sae_config's hook parameter, each checked;
# a truncated archive refused by name.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
G=$ROOT/tests/golden/sae/gemmascope_npz
R=models/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_20
mkdir -p $R plain
ln -s "$G/params.npz" $R/params.npz
cp "$G/params.npz" plain/params.npz
cp "$G/x.npy" x.npy
pipeline() {   # $1: the SAE's path, $2: the hook the sae node is told
cat > p.yaml <<Y
name: gemmascope
nodes:
  acts: {op: npy, params: {path: x.npy}}
  sae_config: {op: sae_config, params: {path: $1}}
  sae: {op: sae, inputs: {x: acts, sae: sae_config}, params: {hook: $2}}
Y
}
# statistics as the float64 reference's (tests/test_sae.c holds the kernels to the same)
check_stats() {
python3 - "$1" "$G/expected_stats.json" "$2" <<'P' || fail "$1 differs from the float64 reference"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert a["tokens"] == b["tokens"] and a["nonfinite_rows"] == b["nonfinite_rows"] == 2, (a["tokens"], b["tokens"])
for k in ("fvu", "mse", "mean_cosine", "mean_l0", "linear_predictability", "total_variance_residual"):
    assert abs(a[k] - b[k]) <= 1e-4 * abs(b[k]), (k, a[k], b[k])
assert a["architecture"] == "jumprelu" and a["apply_b_dec_to_input"] is False, a
assert a["hook_name"] == sys.argv[3], a["hook_name"]
P
}
pipeline $R blocks.3.hook_resid_post
expect_ok $DMICA run p.yaml --out o
check_stats o/sae_stats.json blocks.3.hook_resid_post
# the release path names the hook: another is refused, by the sae node and by sae_config
expect_fail $DMICA plan p.yaml --set sae.hook=blocks.4.hook_resid_post
err_has "reads hook blocks.3.hook_resid_post, but the input comes from hook blocks.4.hook_resid_post"
expect_fail $DMICA plan p.yaml --set sae_config.hook=blocks.5.hook_resid_post
err_has "hook blocks.5.hook_resid_post, but the SAE $R reads blocks.3.hook_resid_post"
expect_ok $DMICA plan p.yaml --set sae_config.hook=blocks.3.hook_resid_post
# a path that names no release: the pipeline gives the hook, and it reaches the sae node
pipeline plain blocks.3.hook_resid_post
expect_ok $DMICA plan p.yaml
expect_fail $DMICA plan p.yaml --set sae_config.hook=blocks.7.hook_resid_post
err_has "reads hook blocks.7.hook_resid_post, but the input comes from hook blocks.3.hook_resid_post"
expect_ok $DMICA run p.yaml --out q --set sae_config.hook=blocks.3.hook_resid_post
check_stats q/sae_stats.json blocks.3.hook_resid_post
# the file itself, through dmica sae
expect_ok $DMICA sae --sae $R/params.npz --in x.npy --residual e.npy --stats st.json
err_has "2 of 200 rows"
check_stats st.json blocks.3.hook_resid_post
# a download cut short
head -c 100000 "$G/params.npz" > plain/params.npz
pipeline plain ""
expect_fail $DMICA plan p.yaml
err_has "plain/params.npz: truncated"
echo ok
