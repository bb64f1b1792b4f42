# dmica ica: planted independent sources are recovered (Amari < 0.01, patterns
# match the mixing columns); streamed and in-RAM runs agree; the same seed gives
# the same result; the fastica operator starts from and lands on scikit-learn's
# W for the same seed; bad input fails clearly; non-convergence is flagged.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy/scipy not available"; exit 77; }
python3 - <<'P' || fail "cannot make planted data"
import numpy as np
rng = np.random.default_rng(0)
n, k, d = 60000, 6, 10
S = np.stack([rng.laplace(size=n), rng.uniform(-1, 1, n), rng.standard_t(5, n),
              np.sign(rng.standard_normal(n)) * (1 + 0.1 * rng.standard_normal(n)),
              rng.standard_normal(n) ** 3, rng.uniform(-1, 1, n)], 1)
S = (S - S.mean(0)) / S.std(0)
A = rng.standard_normal((d, k)) + 0.5          # non-orthogonal, d x k
X = S @ A.T + 0.01 * rng.standard_normal((n, d)) + 2.0   # small isotropic noise off the span
np.save("X.npy", X.astype(np.float32)); np.save("A.npy", A)
np.save("cube.npy", np.zeros((4, 3, 2), np.float32))
Xn = X.astype(np.float32).copy(); Xn[17, 3] = np.nan; np.save("nan.npy", Xn)
# whitened data for the sklearn comparison
Xc = X - X.mean(0); l, C = np.linalg.eigh(np.cov(Xc.T, bias=True)); idx = np.argsort(l)[::-1][:k]
np.save("z.npy", (Xc @ C[:, idx] / np.sqrt(l[idx])).astype(np.float32))
P

# in RAM (default 1G budget) and streamed (a budget too small to hold z)
expect_ok $DMICA ica --in X.npy --components 6 --out ram --cache c1 --quiet
expect_ok $DMICA ica --in X.npy --components 6 --out stream --cache c2 --memory 80M --quiet
expect_ok $DMICA ica --in X.npy --components 6 --out again --cache c3 --quiet
for f in directions.npy unmixing.npy mixing.npy unscaled_patterns.npy ica.json ica_compare.json; do
    [ -s ram/$f ] || fail "ram/$f missing"
done
cmp ram/unmixing.npy again/unmixing.npy || fail "same seed gave a different result"
python3 - <<'P' || fail "planted sources not recovered"
import numpy as np, json
A = np.load("A.npy")
def amari(P):
    P = np.abs(P); n = len(P)
    return ((P.sum(1) / P.max(1) - 1).sum() + (P.sum(0) / P.max(0) - 1).sum()) / (2 * n * (n - 1))
r = {m: json.load(open(m + "/ica.json")) for m in ("ram", "stream")}
assert r["ram"]["in_ram"] and not r["stream"]["in_ram"], (r["ram"]["in_ram"], r["stream"]["in_ram"])
assert r["stream"]["passes"] > 1
assert r["ram"]["converged"] and r["ram"]["iterations_per_seed"] == r["stream"]["iterations_per_seed"]
for m in ("ram", "stream"):
    U = np.load(m + "/unmixing.npy"); D = np.load(m + "/directions.npy"); M = np.load(m + "/mixing.npy")
    a = amari(U @ A); assert a < 0.01, (m, "amari", a)
    An = A / np.linalg.norm(A, axis=0)
    cos = np.abs(D @ An).max(0); assert (cos > 0.99).all(), (m, cos)
    assert np.allclose(np.linalg.norm(D, axis=1), 1)
    assert np.allclose(U @ M, np.eye(6), atol=1e-6)      # filters read back what the mixing writes
    assert min(r[m]["stability"]) > 0.99, r[m]["stability"]
d = np.abs(np.load("ram/unmixing.npy") - np.load("stream/unmixing.npy")).max()
assert d < 1e-4, ("streamed vs in RAM", d)
c = json.load(open("ram/ica_compare.json"))
assert c["variance_explained_by_ica"] > 0.99, c
P

# sklearn: same start, same fixed point (fastica operator on the same whitened data)
if python3 -c "import sklearn" 2>/dev/null; then
    cat > z.yaml <<'Y'
name: z
nodes:
  z: {op: npy, params: {path: z.npy}}
  ica: {op: fastica, inputs: {z: z}, params: {seeds: 2, seed: 7}}
  sink: {op: npy_sink, inputs: {x: z}, params: {file: zcopy.npy}}
Y
    expect_ok $DMICA run z.yaml --cache c4 --out zout --quiet
    python3 - <<'P' || fail "disagrees with scikit-learn"
import numpy as np, json, glob, warnings
from sklearn.decomposition import FastICA
warnings.simplefilter("ignore")
z = np.load("z.npy").astype(np.float64)
sk = FastICA(n_components=6, whiten=False, random_state=7, tol=1e-4, max_iter=1000).fit(z)
U = np.load([f for f in glob.glob("c4/*/unmixing.npy")][0])
j = json.load(open("zout/ica.json"))
assert abs(j["iterations"] - sk.n_iter_) <= 1, (j["iterations"], sk.n_iter_)
assert np.abs(U - sk.components_).max() < 1e-4, np.abs(U - sk.components_).max()
P
fi

# SAE comparison: a random decoder (d_sae x d) with three rows planted on true
# mixing directions (the columns of A: the patterns ICA should find). Those
# components reach max |cos| ~ 1 with the planted feature; the random-unit null
# matches the expected maximum of |cos| of a random unit vector against d_sae
# random unit rows in d dims (computed here by simulation, not assumed), and
# the summary outputs carry the same numbers as ica.json and ica_compare.json.
python3 - <<'P' || fail "cannot make the decoder"
import numpy as np
rng = np.random.default_rng(5)
A = np.load("A.npy"); d_sae = 400
D = rng.standard_normal((d_sae, A.shape[0])).astype(np.float32)
for f, c in ((7, 0), (123, 2), (350, 4)):
    D[f] = 3.0 * A[:, c]                 # any scale: rows are normalised
np.save("dec.npy", D)
P
expect_ok $DMICA ica --in X.npy --components 6 --out sae --cache c1 --decoder dec.npy --seeds 1 --quiet
python3 - <<'P' || fail "SAE comparison wrong"
import numpy as np, json, glob
A = np.load("A.npy"); D = np.load("dec.npy").astype(np.float64); d = A.shape[0]
c = json.load(open("sae/ica_compare.json")); s = c["ica_sae_similarity"]
assert s["d_sae"] == 400 and s["count"] == 6, s
dirs = np.load("sae/directions.npy"); An = A / np.linalg.norm(A, axis=0)
planted = {0: 7, 2: 123, 4: 350}
for col, feat in planted.items():
    i = int(np.argmax(np.abs(dirs @ An[:, col])))          # the component that found column col
    e = s["components"][i]
    assert e["best_feature"] == feat and e["max_abs_cos"] > 0.99, (col, e)
# the other three: their max |cos| is what numpy computes from the decoder
Dn = D / np.linalg.norm(D, axis=1, keepdims=True)
mc = np.abs(dirs @ Dn.T).max(1)
assert np.allclose(mc, [e["max_abs_cos"] for e in s["components"]], atol=1e-5)
assert s["high_similarity_count"] >= 3
# null: E[max over d_sae rows of |cos|] for random unit vectors in d dims
rng = np.random.default_rng(0)
u = rng.standard_normal((2000, d)); u /= np.linalg.norm(u, axis=1, keepdims=True)
expect = np.median(np.abs(u @ Dn.T).max(1))
nu = c["null_baselines"]["random_unit"]
assert nu["count"] == 256 and abs(nu["median"] - expect) < 0.03, (nu["median"], expect)
assert nu["q05"] < nu["median"] < nu["q99"] <= 1
nc = c["null_baselines"]["random_from_covariance"]
assert nc["count"] == 256 and 0 < nc["median"] <= 1, nc
# the cached summary tensors are typed (operators/analysis/summaries.h) and
# hold the products' numbers: ica's carries ica.json whole, ica_compare's the
# counts, histograms and means of ica_compare.json
import struct
def summary(b):
    magic, kind, version, body, extra = struct.unpack_from("<8sIIQQ", b)
    assert magic == b"dmsumry\0" and len(b) == 32 + body + extra, (magic, len(b), body, extra)
    return kind, version, b[32:32 + body], b[32 + body:]
tensors = [summary(np.load(f).tobytes()) for f in glob.glob("c1/*/summary.npy")]
docs = [json.loads(x) for kind, v, body, x in tensors if kind == 2]
assert json.load(open("sae/ica.json")) in docs
# the run with the decoder (c1 also holds the run without one, d_sae 0)
bodies = [body for kind, v, body, x in tensors if kind == 3 and struct.unpack_from("<3q", body)[2] == 400]
assert len(bodies) == 1 and len(bodies[0]) == 3 * 8 + 2 * 8 + 3 * (3 * 8 + 5 * 8 + 20 * 8), len(bodies)
k, dd, d_sae, v_ica, v_unscaled = struct.unpack_from("<3q2d", bodies[0])
assert (k, dd, d_sae) == (c["k"], c["d"], 400), (k, dd, d_sae)
assert float("%.10g" % v_ica) == c["variance_explained_by_ica"]
assert float("%.10g" % v_unscaled) == c["variance_explained_by_unscaled_reconstruction"]
for i, js in enumerate((s, nu, nc)):
    f = struct.unpack_from("<3q5d20q", bodies[0], 40 + i * 224)
    assert f[0] == js["count"] and f[1] == js["high_similarity_count"] and f[2] == js["low_similarity_count"]
    assert [float("%.10g" % x) for x in f[3:8]] == [js[q] for q in ("mean_max_cosine", "q05", "median", "q95", "q99")]
    assert list(f[8:]) == js["histogram"]
P

# seeds: matching is recorded; non-convergence is a warning and flagged
expect_ok $DMICA ica --in X.npy --components 6 --out nc --cache c5 --max-iter 2 --tol 1e-12 --seeds 2
err_has "did not converge"
python3 -c "
import json; j = json.load(open('nc/ica.json'))
assert j['converged'] is False and j['all_converged'] is False and j['iterations'] == 2
assert len(j['seeds'][1]['match']) == 6 and len(j['seeds'][0]['log']) == 2" || fail "non-convergence not flagged"

# bad input
expect_fail $DMICA ica --in X.npy --components 11 --out bad --cache c6
err_has "more than the 10 columns"
expect_fail $DMICA ica --in cube.npy --components 2 --out bad --cache c6
err_has "expected a 2-D matrix"
expect_fail $DMICA ica --in nan.npy --components 3 --out bad --cache c6
err_has "non-finite"
expect_fail $DMICA ica --in X.npy --components 3 --fun tanh --out bad --cache c6
err_has "expected logcosh, exp or cube"
expect_fail $DMICA ica --in X.npy --out bad
err_has "--components K"
cache_consistent c6
echo ok
