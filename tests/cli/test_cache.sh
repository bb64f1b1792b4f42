# The cache: a second run does no work; a changed parameter reruns only that
# node and its dependents; --force reruns a node and its dependents; products
# reach --out as copies (never hard links into the cache); plan says why a node
# is stale.
. "$ROOT/tests/cli/lib.sh"
cat > p.yaml <<'Y'
name: cachetest
nodes:
  src: {op: synthetic, params: {rows: 5000, cols: 6, seed: 1}}
  mom: {op: moments, inputs: {x: src}}
  cov: {op: covariance, inputs: {x: src}}
  pca: {op: pca, inputs: {covariance: cov.covariance}}
  z:
    op: project
    inputs: {x: src, matrix: pca.whitening, mean: cov.mean}
  zmom: {op: moments, inputs: {x: z}, params: {file: z_stats.json}}
  zsink: {op: npy_sink, inputs: {x: z}, params: {file: z.npy}}
Y
ran() { grep -c "ran (" err.txt || true; }
ran_node() { grep -E "^  $1 .*ran \(" err.txt >/dev/null; }

expect_ok $DMICA plan p.yaml
out_has "never run"
expect_ok $DMICA run p.yaml --out out1
[ "$(ran)" = 7 ] || { cat err.txt; fail "first run should run all 7 nodes, ran $(ran)"; }
for f in stats.json covariance.npy pca.json pca_components.npy z_stats.json z.npy; do
    [ -s out1/$f ] || fail "out1/$f missing"
done

expect_ok $DMICA run p.yaml --out out2
[ "$(ran)" = 0 ] || { cat err.txt; fail "second run should do no work, ran $(ran)"; }
cmp out1/z.npy out2/z.npy || fail "cached products differ"
expect_ok $DMICA plan p.yaml
if grep -q stale out.txt; then cat out.txt; fail "plan shows stale nodes after a run"; fi

# change a parameter of zmom only: zmom reruns, replaying z's spill
expect_ok $DMICA plan p.yaml --set zmom.file=z2.json
out_has "parameter file changed (z_stats.json -> z2.json)"
expect_ok $DMICA run p.yaml --set zmom.file=z2.json --out out3
[ "$(ran)" = 1 ] && ran_node zmom || { cat err.txt; fail "only zmom should rerun"; }
[ -s out3/z2.json ] || fail "renamed product missing"

# change the source: everything downstream reruns
expect_ok $DMICA run p.yaml --set src.seed=2
[ "$(ran)" = 7 ] || { cat err.txt; fail "a new seed should rerun all 7 nodes, ran $(ran)"; }

# change the PCA floor: pca and what reads it rerun, not src, mom or cov
expect_ok $DMICA run p.yaml --set pca.floor=1e-9
[ "$(ran)" = 4 ] && ran_node pca && ran_node z && ran_node zmom && ran_node zsink || { cat err.txt; fail "pca change should rerun pca, z, zmom, zsink"; }

# --force
expect_ok $DMICA run p.yaml --force cov
[ "$(ran)" = 5 ] && ran_node cov && ran_node pca && ran_node z || { cat err.txt; fail "--force cov should rerun cov and its 4 dependents"; }
expect_fail $DMICA run p.yaml --force nosuch
err_has "no node named 'nosuch'"

# the whitened stream has identity covariance (a check that the data flowed)
if have_numpy; then
    python3 - <<'P' || fail "whitened data is not white"
import numpy as np
z = np.load("out1/z.npy")
assert z.shape == (5000, 6), z.shape
c = np.cov(z.T, bias=True)
assert np.abs(c - np.eye(6)).max() < 1e-4, c
P
fi
# two nodes writing the same product collide, unless one has a publish prefix
cat > clash.yaml <<'Y'
nodes:
  src: {op: synthetic, params: {rows: 100, cols: 3}}
  a: {op: moments, inputs: {x: src}}
  b:
    op: moments
    inputs: {x: src}
    params: {file: stats.json}
Y
expect_fail $DMICA run clash.yaml --out clash
err_has "both write 'stats.json'"
printf '    publish: second/\n' >> clash.yaml
expect_ok $DMICA run clash.yaml --out clash
[ -s clash/stats.json ] && [ -s clash/second/stats.json ] || fail "publish prefix not applied"
cache_consistent

# Files in --out are copies, never hard links into the cache: editing them
# changes nothing that a later run publishes (reflinks share blocks only until
# one side is written).
expect_ok $DMICA demo --out d1 --cache dc --quiet
cp d1/pca.json ref.json && cp d1/residual_covariance.npy ref.npy
[ -z "$(find d1 -type f -links +1)" ] || fail "hard links in --out: $(find d1 -type f -links +1)"
echo note >> d1/pca.json
python3 - d1/residual_covariance.npy <<'P'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0xff
open(p, "r+b").write(b)
P
cmp -s ref.npy d1/residual_covariance.npy && fail "the byte was not flipped"
expect_ok $DMICA demo --out d2 --cache dc --quiet
cmp ref.json d2/pca.json || fail "an edit of d1/pca.json reached the cache"
cmp ref.npy d2/residual_covariance.npy || fail "a byte flipped in d1/residual_covariance.npy reached the cache"
expect_ok $DMICA demo --out d1 --cache dc --quiet
cmp ref.json d1/pca.json || fail "publishing again did not restore d1/pca.json"

# the same for files a command hands over (generated.c), with a kept cache and
# with a temporary one
if have_numpy; then
    python3 -c "import numpy as np; np.save('x.npy', np.random.default_rng(1).standard_normal((500, 64)).astype(np.float32))"
    expect_ok $DMICA sae --sae d1/planted-sae --in x.npy --residual e.npy --stats st.json --cache sc --quiet
    [ "$(stat -c %h e.npy)" = 1 ] && [ "$(stat -c %h st.json)" = 1 ] || fail "dmica sae's files are hard links"
    cp e.npy e_ref.npy
    printf 'xxxx' | dd of=e.npy bs=1 seek=200 conv=notrunc 2>/dev/null
    expect_ok $DMICA sae --sae d1/planted-sae --in x.npy --residual e2.npy --cache sc --quiet
    cmp e_ref.npy e2.npy || fail "an edit of dmica sae's file reached its cache"
    expect_ok $DMICA sae --sae d1/planted-sae --in x.npy --residual e3.npy --quiet
    cmp e_ref.npy e3.npy || fail "dmica sae without --cache differs"
    [ "$(stat -c %h e3.npy)" = 1 ] || fail "e3.npy has other names"
    [ -z "$(ls -A | grep '^\.dmica-sae')" ] || fail "temporary folders left: $(ls -A)"
fi
cache_consistent dc
echo ok
