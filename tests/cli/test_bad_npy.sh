# Bad .npy inputs: missing, truncated, not 2-D, unsupported dtype, fortran order.
. "$ROOT/tests/cli/lib.sh"
G=$ROOT/tests/golden/npy
expect_fail $DMICA stats --in missing.npy --out o
err_has "missing.npy"

# a valid header followed by too little data
python3 -c "
import struct
h = b\"{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 8), }\"
h = h + b' ' * (118 - len(h)) + b'\n'
open('trunc.npy','wb').write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(h)) + h + b'\0' * 100)
" || exit 77
expect_fail $DMICA stats --in trunc.npy --out o
err_has "trunc.npy"; err_has "truncated"

python3 -c "
import struct
def save(name, descr, shape, fortran=False, nbytes=0):
    h = (\"{'descr': '%s', 'fortran_order': %s, 'shape': %s, }\" % (descr, fortran, shape)).encode()
    h = h + b' ' * (118 - len(h)) + b'\n'
    open(name,'wb').write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(h)) + h + b'\0' * nbytes)
save('three_d.npy', '<f4', (2, 3, 4), nbytes=96)
save('one_d.npy', '<f4', (12,), nbytes=48)
save('ints.npy', '<i4', (4, 3), nbytes=48)
save('complex.npy', '<c8', (4, 3), nbytes=96)
save('fortran.npy', '<f4', (4, 3), fortran=True, nbytes=48)
save('bigend.npy', '>f4', (4, 3), nbytes=48)
save('empty.npy', '<f4', (0, 3), nbytes=0)
open('garbage.npy','wb').write(b'not an npy file at all')
"
expect_fail $DMICA stats --in three_d.npy --out o; err_has "three_d.npy"; err_has "2-D"
expect_fail $DMICA stats --in one_d.npy --out o; err_has "one_d.npy"; err_has "2-D"
expect_fail $DMICA stats --in ints.npy --out o; err_has "ints.npy"; err_has "dtype"
expect_fail $DMICA stats --in complex.npy --out o; err_has "complex.npy"
expect_fail $DMICA stats --in fortran.npy --out o; err_has "fortran.npy"; err_has "ortran"
expect_fail $DMICA stats --in bigend.npy --out o; err_has "bigend.npy"
expect_fail $DMICA stats --in empty.npy --out o; err_has "empty.npy"; err_has "no rows"
expect_fail $DMICA stats --in garbage.npy --out o; err_has "garbage.npy"
chmod 000 ints.npy
if [ "$(id -u)" != 0 ]; then expect_fail $DMICA stats --in ints.npy --out o; err_has "ints.npy"; fi
[ ! -e o ] || [ -z "$(ls o)" ] || fail "outputs written for bad input"
cache_consistent
# npy_sink file names are checked when the pipeline is bound, naming the node and line,
# before any work (file: "." failed deep in the run naming a temporary path)
for f in . .. a/b ../x.npy node.json x.txt .npy; do
    printf 'nodes:\n  src: {op: synthetic, params: {rows: 100, cols: 4}}\n  keep:\n    op: npy_sink\n    inputs: {x: src}\n    params: {file: "%s"}\n' "$f" > sink.yaml
    expect_fail $DMICA plan sink.yaml
    err_has "sink.yaml:3: node 'keep' (npy_sink): file must be a plain file name ending in .npy"
    expect_fail $DMICA run sink.yaml --out sink_out --cache sink_cache
    err_has "sink.yaml:3: node 'keep' (npy_sink)"
    [ ! -d sink_cache ] || [ -z "$(ls -A sink_cache/tmp 2>/dev/null)" ] || fail "work started with file '$f'"
done
# NaN reaching PCA names the node and its input (it said "covariance[0][1] is nan")
if have_numpy; then
    python3 -c "
import numpy as np
x = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32); x[7, 1] = np.nan
np.save('nan.npy', x)
"
    printf 'nodes:\n  src: {op: npy, params: {path: nan.npy}}\n  cov: {op: covariance, inputs: {x: src}}\n  pca: {op: pca, inputs: {covariance: cov.covariance}}\n' > nan.yaml
    expect_fail $DMICA run nan.yaml --out nan_out --cache nan_cache
    err_has "nan.yaml:4: node 'pca' (pca): input covariance holds NaN at [0][1]: the statistics' input had non-finite (NaN or Inf) rows"
fi
echo ok
