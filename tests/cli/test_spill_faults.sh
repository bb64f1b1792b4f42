# Spill files, cached tensors and products that go bad, and disks that fill up:
# a corrupt chunk or file is detected and its node recomputed, never used; a
# full disk fails the run cleanly with a message naming the file, leaves the
# cache consistent, and the next run works.
. "$ROOT/tests/cli/lib.sh"
# (in one piece: shard: 0; the windows below are read from a shard's spill)
cat > p.yaml <<'Y'
name: spilltest
memory: 80M
shard: 0
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

# Tensors and product files in the cache are checksummed too (node.json records
# each file's size and XXH3): a changed, short or missing one is detected when
# it is used (a tensor loaded for a consumer, a product published), named in a
# warning, and its node recomputed, as a bad spill is.
xor_byte() { # FILE OFFSET (negative: from the end)
    python3 - "$1" "$2" <<'P'
import sys
p, off = sys.argv[1], int(sys.argv[2])
b = bytearray(open(p, "rb").read()); b[off] ^= 0x5a
open(p, "r+b").write(b)
P
}
# the products of two demo runs are the same, timings apart
same_products() {
    python3 - "$1" "$2" <<'P' || fail "products of $1 and $2 differ"
import json, os, sys
a, b = sys.argv[1], sys.argv[2]
def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if not k.endswith("_s") and k not in ("seconds", "timings", "state")}
    if isinstance(o, list):
        return [strip(x) for x in o]
    return o
bad = []
for root, _, files in os.walk(a):
    for f in files:
        pa = os.path.join(root, f); pb = os.path.join(b, os.path.relpath(pa, a))
        if f == "run.json":
            continue
        if not os.path.exists(pb):
            bad.append(pb + " missing"); continue
        if f.endswith(".json"):
            if strip(json.load(open(pa))) != strip(json.load(open(pb))):
                bad.append(f)
        elif open(pa, "rb").read() != open(pb, "rb").read():
            bad.append(f)
if bad:
    print("differ:", bad); sys.exit(1)
P
}
expect_ok $DMICA demo --out clean --cache dc --quiet
pca=$(dirname "$(grep -l '"node": "pca"' dc/*/node.json)")
[ -f "$pca/whitening.npy" ] || fail "no whitening.npy in the pca entry $pca"
xor_byte "$pca/whitening.npy" -5
expect_ok $DMICA demo --out out2 --cache dc --force whiten
err_has "whitening.npy: checksum mismatch"; err_has "recomputing node 'pca'"
grep -E '^  pca .*ran \(' err.txt >/dev/null || { cat err.txt; fail "pca should have been recomputed"; }
same_products clean out2
# a product: detected when published, recomputed
xor_byte "$pca/pca.json" 20
expect_ok $DMICA demo --out out3 --cache dc
err_has "pca.json: checksum mismatch"; err_has "recomputing node 'pca'"
same_products clean out3
echo extra >> "$pca/pca_components.npy"
expect_ok $DMICA demo --out out4 --cache dc --quiet
err_has "pca_components.npy"; err_has "bytes, but"
same_products clean out4
# a missing tensor
rm "$pca/eigenvalues.npy"
expect_ok $DMICA demo --out out5 --cache dc --force compare --quiet
err_has "eigenvalues.npy: missing"
same_products clean out5
# a short one (the npy header still valid would not do: the size is checked first)
size=$(stat -c %s "$pca/whitening.npy")
truncate -s $((size - 8)) "$pca/whitening.npy"
expect_ok $DMICA demo --out out6 --cache dc --force whiten --quiet
err_has "whitening.npy"; err_has "recomputing node 'pca'"
same_products clean out6
cache_consistent dc

# a spill read by row (topk's token windows) whose chunk went bad: its producer
# is recomputed too
if have_numpy; then
    python3 - <<'P'
import numpy as np
rng = np.random.default_rng(3)
np.save("windows.npy", rng.integers(0, 50000, size=(50, 16)).astype(np.int32))
np.save("values.npy", rng.standard_normal((800, 3)).astype(np.float32))
P
    cat > r.yaml <<Y
name: byrow
nodes:
  win: {op: npy, params: {path: windows.npy, dtype: i32}, spill: always}
  vals: {op: npy, params: {path: values.npy}}
  top:
    op: topk
    inputs: {values: vals, windows: win}
    params: {k: 7, context: 3, tokenizer: $ROOT/tests/data/gpt2-tokenizer}
Y
    expect_ok $DMICA run r.yaml --out r1 --cache rc --quiet
    # win runs in shards (one here): its spill lies in the shard's entry
    win=$(dirname "$(grep -l '"node": "win"' rc/*/node.json | xargs grep -l '"shard"')")
    size=$(stat -c %s "$win/out.spill")
    xor_byte "$win/out.spill" $((size / 2))
    expect_ok $DMICA run r.yaml --out r2 --cache rc --set top.k=6
    err_has "out.spill"; err_has "checksum mismatch"; err_has "recomputing that shard"; err_has "recomputing node 'win'"
    expect_ok $DMICA run r.yaml --out r3 --cache rc --set top.k=7 --quiet
    cmp r1/topk.json r3/topk.json || fail "topk after the recomputed spill differs"
    cache_consistent rc
fi
echo ok
