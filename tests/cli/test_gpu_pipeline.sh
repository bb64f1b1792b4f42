# On a GPU (issue 13): the model, the SAE and the statistics of one group run
# on the GPU, each stage reading the previous one's rows where they already
# are (dm_chunk.dev, device.h's hints), and give the CPU's results within the
# GPU's rounding. Skipped (77) without a GPU or numpy.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "skipped: no numpy"; exit 77; }
python3 "$ROOT/tools/make-sae" --d-in 64 --d-sae 256 --l0 8 --hook blocks.1.hook_resid_pre --out sae >/dev/null
python3 -c "
import numpy as np
t = np.random.default_rng(3).integers(0, 100, size=(300, 32)).astype(np.int32)
t[:, 0] = 100
np.save('tokens.npy', t)"
cat > p.yaml <<Y
nodes:
  tok: {op: text, params: {path: tokens.npy, context: 32}}
  sae_config: {op: sae_config, params: {path: sae}}
  lm: {op: gpt2, inputs: {tokens: tok}, params: {model: $ROOT/tests/golden/gpt2/c64h4, hooks: blocks.1.hook_resid_pre, batch: 100}}
  sae: {op: sae, inputs: {x: lm, sae: sae_config}}
  xm: {op: moments, inputs: {x: lm}, params: {file: x.json}}
  em: {op: moments, inputs: {x: sae.residual}, params: {file: e.json}}
  ec: {op: covariance, inputs: {x: sae.residual}, params: {file: ec.npy}}
Y
export DMICA_CUDA_VERBOSE=1
expect_ok $DMICA run p.yaml --device cuda --out gpu --cache c1
unset DMICA_CUDA_VERBOSE
grep -q "running on .* (CUDA)" err.txt || { echo "skipped: no GPU here"; exit 77; }
# the SAE read the model's rows, and the statistics the SAE's, on the GPU
grep "uploads from device copies" err.txt
grep -q "cuda: [1-9][0-9]* uploads from device copies" err.txt || fail "no upload was served by a device copy
expect_ok $DMICA run p.yaml --device cpu --out cpu --cache c2
# Tolerance: float32 model and SAE in other summation orders (about 1e-6
# relative), an SAE feature near its threshold may flip for a few of the 9600
# tokens; the statistics are sums over all of them: 1e-4 of each array's scale.
python3 - <<'P' || fail "the GPU's results differ from the CPU's"
import json, sys
import numpy as np
def close(a, b, what):
    a, b = np.asarray(a, float), np.asarray(b, float)
    err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)
    print(f"{what}: {err:.2g}")
    return err <= 1e-4
ok = True
for f in ("x.json", "e.json"):
    g, c = json.load(open("gpu/" + f)), json.load(open("cpu/" + f))
    for k in ("mean", "var", "skew", "excess_kurtosis"):
        if k in c:
            ok &= close(g[k], c[k], f + " " + k)
ok &= close(np.load("gpu/ec.npy"), np.load("cpu/ec.npy"), "ec.npy")
sys.exit(0 if ok else 1)
P
echo ok
