# dmica stats against numpy/scipy on a small heavy-tailed matrix (float32 and
# float16 inputs), and the command-line basics.
. "$ROOT/tests/cli/lib.sh"
expect_ok $DMICA --help; out_has "usage: dmica"
for c in run plan demo stats ops tokenize activations sae ica analyze top; do
    expect_ok $DMICA $c --help; out_has "usage: dmica $c"
done
expect_fail $DMICA frobnicate; err_has "unknown command"
expect_fail $DMICA stats --out o; err_has "--in"
expect_fail $DMICA stats --in x.npy; err_has "--out DIR is required"
expect_fail $DMICA stats --in x.npy --out o --memory 0; err_has "dmica stats: --memory: must be at least 1"
have_numpy || { echo "numpy missing"; exit 77; }
python3 - <<'P'
import numpy as np
rng = np.random.default_rng(7)
n, d = 20000, 10
s = rng.laplace(size=(n, d)) * np.linspace(0.5, 3, d)
a = rng.normal(size=(d, d))
x = (s @ a + 5.0).astype(np.float32)
np.save("x.npy", x)
np.save("x16.npy", x.astype(np.float16))
P
expect_ok $DMICA stats --in x.npy --out s32 --memory 70M
expect_ok $DMICA stats --in x16.npy --out s16
python3 - <<'P' || fail "stats disagree with numpy/scipy"
import json, numpy as np
from scipy import stats as st
for name, out in (("x.npy", "s32"), ("x16.npy", "s16")):
    x = np.load(name).astype(np.float64)
    js = json.load(open(out + "/stats.json"))
    assert js["n"] == x.shape[0]
    def rel(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)
    # the engine accumulates in double from float32 rows, as numpy does here:
    # agreement is limited only by summation order, far below 1e-9
    checks = {
        "mean": (js["mean"], x.mean(0)),
        "var": (js["var"], x.var(0)),
        "skew": (js["skew"], st.skew(x, 0)),
        "excess_kurtosis": (js["excess_kurtosis"], st.kurtosis(x, 0)),
    }
    for k, (a, b) in checks.items():
        assert rel(a, b) < 1e-9, (out, k, rel(a, b))
    cov = np.load(out + "/covariance.npy")
    assert cov.dtype == np.float64 and cov.shape == (10, 10)
    assert rel(cov, np.cov(x.T, bias=True)) < 1e-9, rel(cov, np.cov(x.T, bias=True))
    pca = json.load(open(out + "/pca.json"))
    ev = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1]
    assert rel(pca["eigenvalues"], ev) < 1e-9
    assert rel(pca["explained_variance_ratio"], ev / ev.sum()) < 1e-9
    comp = np.load(out + "/pca_components.npy")
    c = np.cov(x.T, bias=True)
    for i in range(10):
        v = comp[i]
        assert abs(np.linalg.norm(v) - 1) < 1e-9
        assert np.abs(c @ v - ev[i] * v).max() < 1e-8 * ev[0]
print("ok")
P
echo ok
