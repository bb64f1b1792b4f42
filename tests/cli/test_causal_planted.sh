# The causal tests find what the model uses (issue 14): a tiny GPT-2 whose
# embedding writes a planted direction u into the residual stream for 20 of
# its tokens, and whose tied unembedding reads u back out; a random SAE that
# knows nothing of u. ICA of the SAE's residual at blocks.1.hook_resid_pre
# finds a component along u, and removing it changes the model's next-token
# distribution more than 95% of the null directions removed with the same
# energy, and more (in null standard deviations) than any other component.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy not available"; exit 77; }
python3 "$ROOT/tools/make-gpt2" --n-embd 64 --n-layer 2 --n-head 4 --n-positions 32 --vocab-size 101 --seed 7 \
    --out gpt2 >/dev/null || fail "make-gpt2"
python3 "$ROOT/tools/make-sae" --d-in 64 --d-sae 128 --l0 16 --hook blocks.1.hook_resid_pre --seed 3 --out sae \
    >/dev/null || fail "make-sae"
python3 - "$ROOT/tools" <<'P' || fail "planting the atom"
import json, struct, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import gpt2_reference
t = gpt2_reference.read_safetensors("gpt2/model.safetensors")
wte = np.array(t["wte.weight"], dtype=np.float64)
rng = np.random.default_rng(0)
u = rng.standard_normal(64)
u -= u.mean()  # a direction the hook's centring keeps
u /= np.linalg.norm(u)
wte[:20] += 4 * np.linalg.norm(wte, axis=1).mean() * u  # tokens 0..19 write u; the unembedding reads it
t["wte.weight"] = wte
np.save("atom.npy", u)
header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
for name in sorted(t):
    b = np.ascontiguousarray(np.asarray(t[name], dtype="<f4")).tobytes()
    header[name] = {"dtype": "F32", "shape": list(np.shape(t[name])), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open("gpt2/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
tok = rng.integers(20, 100, size=(256, 32)).astype(np.int32)
mask = rng.random(tok.shape) < 0.05  # the planted tokens: 5% of the text
tok[mask] = rng.integers(0, 20, size=int(mask.sum()))
tok[:, 0] = 100
np.save("tokens.npy", tok)
P
cat > p.yaml <<Y
nodes:
  sae_config: {op: sae_config, params: {path: sae}}
  text: {op: text, params: {path: tokens.npy, context: 32}}
  gpt2: {op: gpt2, inputs: {tokens: text.windows, sae: sae_config}, params: {model: gpt2, hooks: blocks.1.hook_resid_pre}}
  sae: {op: sae, inputs: {x: gpt2.blocks.1.hook_resid_pre, sae: sae_config}}
  cov: {op: covariance, inputs: {x: sae.residual}}
  pca: {op: pca, inputs: {covariance: cov.covariance}, params: {k: 8}}
  whiten: {op: project, inputs: {x: sae.residual, matrix: pca.whitening, mean: cov.mean}}
  ica: {op: fastica, inputs: {z: whiten}, params: {seeds: 1, max_iter: 1000}}
  compare:
    op: ica_compare
    inputs: {unmixing: ica.unmixing, eigenvalues: pca.eigenvalues, components: pca.components, mean: cov.mean}
    params: {directions_file: ica_directions.npy}
  causal:
    op: causal
    inputs: {windows: text.windows, sae: sae_config, filters: compare.filters, mixing: compare.mixing,
             mean: cov.mean, eigenvalues: pca.eigenvalues, components: pca.components}
    params: {model: gpt2, tokens: 4096, nulls: 20}
Y
expect_ok $DMICA run p.yaml --out out --quiet
python3 - <<'P' || fail "the planted component is not the one the model uses"
import json
import numpy as np
u, D = np.load("atom.npy"), np.load("out/ica_directions.npy")
cos = np.abs(D @ u) / np.linalg.norm(D, axis=1)
c = json.load(open("out/causal.json"))["components"]
i = int(np.argmax(cos))
z = [x["z"] for x in c]
print(f"component {i} along the atom (|cos| {cos[i]:.3f}): KL {c[i]['kl']:.4g}, nulls' 95% {c[i]['null_kl_q95']:.4g}, "
      f"z {z[i]:.2f}; the others' largest z {max(z[:i] + z[i + 1:]):.2f}")
assert cos[i] > 0.7, "ICA did not find the atom"
assert c[i]["above_null_q95"] and c[i]["kl"] > 1.1 * c[i]["null_kl_q95"]
assert z[i] > max(z[:i] + z[i + 1:]) + 1
P
echo ok
