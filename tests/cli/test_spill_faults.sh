# Spill files that go bad and disks that fill up: a corrupt chunk is detected
# and its node recomputed, never used; a full disk fails the run cleanly with a
# message naming the file, leaves the cache consistent, and the next run works.
. "$ROOT/tests/cli/lib.sh"
cat > p.yaml <<'Y'
name: spilltest
memory: 80M
nodes:
  src: {op: synthetic, params: {rows: 20000, cols: 16, seed: 3}}
  cov: {op: covariance, inputs: {x: src}}
  pca: {op: pca, inputs: {covariance: cov.covariance}}
  z:
    op: project
    inputs: {x: src, matrix: pca.whitening, mean: cov.mean}
    spill_codec: zstd
  sink: {op: npy_sink, inputs: {x: z}, params: {file: z.npy}}
Y
expect_ok $DMICA run p.yaml --out a
key=$(grep -E '^  z ' err.txt | awk '{print $3}')
entry=$(ls -d .dmica-cache/${key}* | head -n 1)
[ -f "$entry/out.spill" ] || fail "no spill for z in $entry"

# flip one byte in the middle of z's spill, then make the sink rerun
size=$(stat -c %s "$entry/out.spill")
printf '\377' | dd of="$entry/out.spill" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
expect_ok $DMICA run p.yaml --set sink.file=z2.npy --out b
err_has "checksum mismatch"; err_has "out.spill"
grep -E '^  z .*ran \(' err.txt >/dev/null || { cat err.txt; fail "z should have been recomputed"; }
cmp a/z.npy b/z2.npy || fail "recomputed output differs"

# a truncated spill is also recomputed
truncate -s $((size / 3)) "$entry/out.spill" 2>/dev/null || { head -c $((size / 3)) "$entry/out.spill" > t && mv t "$entry/out.spill"; }
expect_ok $DMICA run p.yaml --set sink.file=z3.npy --out c
cmp a/z.npy c/z3.npy || fail "output after truncation differs"

# a full disk: writes fail after 200 kB
rm -rf .dmica-cache
expect_fail env DMICA_FAULT_ENOSPC_AFTER=200000 $DMICA run p.yaml --out d
err_has "No space left on device"
grep -q ".spill\|.npy\|.json" err.txt || fail "the message should name the file"
cache_consistent
[ ! -e d/z.npy ] || fail "a half-written result was published"
# the plain pread/pwrite path gives the same results as io_uring
expect_ok env DMICA_NO_URING=1 $DMICA run p.yaml --out e
cmp a/z.npy e/z.npy || fail "fallback I/O path gives different results"
cache_consistent
echo ok
