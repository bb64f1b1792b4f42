# dmica cache verify: every entry's tensors and products against the size and
# XXH3 its node.json recorded, spills chunk by chunk; one line per problem
# (node, file, what is wrong), exit 1 when an entry is bad, and --remove deletes
# the bad entries so the next run recomputes them.
. "$ROOT/tests/cli/lib.sh"
# a node's entry, and the entry of its (only) shard
entry_of() { dirname "$(grep -l "\"node\": \"$1\"" dc/*/node.json | xargs grep -L '"shard"')"; }
shard_of() { dirname "$(grep -l "\"node\": \"$1\"" dc/*/node.json | xargs grep -l '"shard"')"; }
xor_byte() { # FILE OFFSET (negative: from the end)
    python3 - "$1" "$2" <<'P'
import sys
p, off = sys.argv[1], int(sys.argv[2])
b = bytearray(open(p, "rb").read()); b[off] ^= 0x5a
open(p, "r+b").write(b)
P
}
expect_ok $DMICA cache verify --help; out_has "usage: dmica cache verify"
expect_fail $DMICA cache verify --cache nosuch
err_has "nosuch: cannot list"
expect_fail $DMICA cache verify --cache dc --bogus
[ $code = 2 ] || fail "an unknown option should exit 2, not $code"

expect_ok $DMICA demo --out clean --cache dc --quiet
n=$(ls -d dc/*/node.json | wc -l)
expect_ok $DMICA cache verify --cache dc
err_has "$n entries checked, 0 bad"
[ ! -s out.txt ] || fail "a clean cache has no problems: $(cat out.txt)"
DMICA_CACHE=dc expect_ok $DMICA cache verify
err_has "dc: $n entries checked"

# four kinds of damage in four entries
# (sources runs in shards, one here: its spill lies in the shard's entry)
pca=$(entry_of pca); cov=$(entry_of residual_covariance); rep=$(entry_of report); src=$(shard_of sources)
srcnode=$(entry_of sources)
[ -f "$src/out.spill" ] || fail "no spill in the sources shard's entry $src"
xor_byte "$pca/whitening.npy" -3
rm "$cov/residual_covariance.npy"
echo '{"key": ' > "$rep/node.json"
size=$(stat -c %s "$src/out.spill")
xor_byte "$src/out.spill" $((size / 2))
expect_fail $DMICA cache verify --cache dc
[ $code = 1 ] || fail "bad entries should exit 1, not $code"
# the damaged shard, and the node whose stream lies in it
err_has "$n entries checked, 5 bad"
out_has "(node 'pca'): whitening.npy:"; out_has "whitening.npy: checksum mismatch"
out_has "(node 'residual_covariance'): residual_covariance.npy:"; out_has "residual_covariance.npy: missing"
out_has "node.json:"
out_has "(node 'sources'): out.spill:"; out_has "out.spill: chunk 0"; out_has "checksum mismatch (stored"
out_has "shard 0 of output 'out' is bad"
[ "$(wc -l < out.txt)" = 5 ] || { cat out.txt; fail "one line per problem expected"; }
[ -d "$pca" ] && [ -d "$rep" ] || fail "verify without --remove removed an entry"

# an entry written before checksums were recorded counts as bad
mom=$(entry_of residual_moments)
python3 - "$mom/node.json" <<'P'
import json, sys
j = json.load(open(sys.argv[1])); del j["files"]; json.dump(j, open(sys.argv[1], "w"))
P
expect_fail $DMICA cache verify --cache dc
out_has "(node 'residual_moments'): residual_stats.json:"; out_has "no checksum recorded"

expect_fail $DMICA cache verify --cache dc --remove
err_has "6 bad (removed)"
for e in "$pca" "$cov" "$rep" "$src" "$srcnode" "$mom"; do [ ! -e "$e" ] || fail "$e was not removed"; done
expect_ok $DMICA cache verify --cache dc
err_has "$((n - 6)) entries checked, 0 bad"
# the next run recomputes what was removed, and gets the same results
expect_ok $DMICA demo --out again --cache dc
grep -E '^  pca .*ran \(' err.txt >/dev/null || { cat err.txt; fail "pca should have been recomputed"; }
for f in pca.json residual_covariance.npy ica_sources.npy report.html; do
    cmp clean/$f again/$f || fail "$f differs after the removed entries were recomputed"
done
expect_ok $DMICA cache verify --cache dc
err_has "$n entries checked, 0 bad"
cache_consistent dc
echo ok
