# dmica cache du and gc (issue 11, "Nothing that grows"): sizes per pipeline and
# node; gc removes the entries no pipeline's last run uses, or those not used
# for a given age, or the least recently used down to a size, and the
# temporary folders of dead runs; --dry-run removes nothing; options are checked.
. "$ROOT/tests/cli/lib.sh"
cat > p.yaml <<'Y'
name: gctest
nodes:
  src: {op: synthetic, params: {rows: 3000, cols: 5, seed: 1}}
  mom: {op: moments, inputs: {x: src}}
  cov: {op: covariance, inputs: {x: src}}
  pca: {op: pca, inputs: {covariance: cov.covariance}}
Y
cat > q.yaml <<'Y'
name: other
nodes:
  src: {op: synthetic, params: {rows: 2000, cols: 3, seed: 7}}
  cov: {op: covariance, inputs: {x: src}}
Y
# node entries (a shard's entry belongs to its node's: counted, sized and removed with it)
entries() { grep -L '"shard"' c/????????????????????????????????/node.json 2>/dev/null | wc -l; }
shard_entries() { grep -l '"shard"' c/????????????????????????????????/node.json 2>/dev/null | wc -l; }
key_of() { grep -E "^  $1 " err.txt | awk '{print $3}'; } # 12 digits of node $1's key, from the plan printout
entry_of() { ls -d c/$1* 2>/dev/null | head -n 1; }
ran() { grep -c "ran (" err.txt || true; }

expect_ok $DMICA run p.yaml --cache c
expect_ok $DMICA run q.yaml --cache c
expect_ok $DMICA run p.yaml --cache c --set src.seed=2 # src, mom, cov, pca of seed 1 are no pipeline's last run now
expect_ok $DMICA run p.yaml --cache c --set src.seed=2
pca2=$(key_of pca)
[ "$(entries)" = 10 ] || fail "expected 10 entries, found $(entries)"
[ "$(shard_entries)" = 8 ] || fail "expected 8 shard entries (src, mom, cov x 2 seeds; src, cov), found $(shard_entries)"

# du: every pipeline and node, unreferenced entries, temporary folders
expect_ok $DMICA cache du --cache c
out_has "cache c: "
out_has "pipeline gctest (4 nodes)"
out_has "pipeline other (2 nodes)"
out_has "$pca2"
grep -qE "^    pca +[0-9.]+ (B|KiB)" out.txt || { cat out.txt; fail "du lists no size for node pca"; }
out_has "unreferenced: 4 entries"
out_has "temporary: 0 folders of runs in progress"
# DMICA_CACHE is the default, as for run
DMICA_CACHE=c expect_ok $DMICA cache du
out_has "pipeline gctest"

# a temporary folder of a process that is gone
sh -c 'exit 0' & dead=$!
wait $dead
mkdir -p c/tmp/0123456789abcdef0123456789abcdef.$dead.12345.1

# --dry-run says what it would remove and removes nothing
expect_ok $DMICA cache gc --cache c --dry-run
out_has "would remove 4 entries"
out_has "1 temporary folder of runs that are gone"
out_has "--dry-run: nothing removed"
[ "$(grep -c '^would remove [0-9a-f]\{32\} ' out.txt)" = 4 ] || { cat out.txt; fail "dry run should list 4 entries"; }
[ "$(entries)" = 10 ] || fail "--dry-run removed entries"
[ -d c/tmp/0123456789abcdef0123456789abcdef.$dead.12345.1 ] || fail "--dry-run removed a temporary folder"

# gc: the 4 unreferenced entries and the dead run's folder go; both pipelines
# are still cached as last run
expect_ok $DMICA cache gc --cache c
out_has "removed 4 entries"
out_has "no pipeline's last run uses it"
out_has "(its run, pid $dead, is gone)"
[ "$(entries)" = 6 ] || fail "gc should leave 6 entries, left $(entries)"
[ "$(shard_entries)" = 5 ] || fail "gc should remove the removed nodes' shards with them, left $(shard_entries)"
[ -z "$(ls -A c/tmp)" ] || fail "gc left c/tmp: $(ls c/tmp)"
cache_consistent c
expect_ok $DMICA run p.yaml --cache c --set src.seed=2
[ "$(ran)" = 0 ] || { cat err.txt; fail "gc removed an entry the last run of gctest uses"; }
expect_ok $DMICA run q.yaml --cache c
[ "$(ran)" = 0 ] || { cat err.txt; fail "gc removed an entry the last run of other uses"; }
expect_ok $DMICA cache gc --cache c
out_has "removed 0 entries"

# --older-than: a run marks the entries it uses; entries not used for 3 days go
touch -d '3 days ago' c/????????????????????????????????
expect_ok $DMICA run q.yaml --cache c
expect_ok $DMICA cache gc --cache c --older-than 2d
out_has "removed 4 entries"
out_has "not used for longer than --older-than"
[ "$(entries)" = 2 ] || fail "--older-than 2d should leave q.yaml's 2 entries, left $(entries)"
expect_ok $DMICA run q.yaml --cache c
[ "$(ran)" = 0 ] || { cat err.txt; fail "--older-than removed an entry used just now"; }
expect_ok $DMICA plan p.yaml --cache c --set src.seed=2
out_has "stale: its cache entry is missing"

# --max-size: the least recently used go first, until the rest fits
expect_ok $DMICA run p.yaml --cache c --set src.seed=2
src=$(key_of src)
touch -d '2 hours ago' c/????????????????????????????????
touch -d '3 hours ago' $(entry_of $src)
total=$(du -scB1 c/???????????????????????????????? | tail -n 1 | cut -f1)
expect_ok $DMICA cache gc --cache c --max-size $((total - 1))
out_has "removed 1 entry "
out_has "least recently used, over --max-size"
[ -e "$(entry_of $src)" ] && fail "--max-size removed another entry than the least recently used one ($src)"
[ "$(entries)" = 5 ] || fail "--max-size should remove one entry, left $(entries)"
expect_ok $DMICA cache gc --cache c --max-size 1
[ "$(entries)" = 0 ] || fail "--max-size 1 should remove every entry, left $(entries)"
cache_consistent c

# options and folders are checked
expect_fail $DMICA cache gc --cache c --older-than 5
[ $code = 2 ] || fail "--older-than 5: exit $code, expected 2"
err_has "dmica cache gc: --older-than: needs a unit"
expect_fail $DMICA cache gc --cache c --older-than 5y
err_has "unknown unit"
expect_fail $DMICA cache gc --cache c --older-than=-1d
err_has "--older-than: must be a number"
expect_fail $DMICA cache gc --cache c --max-size lots
[ $code = 2 ] || fail "--max-size lots: exit $code, expected 2"
err_has "dmica cache gc: --max-size:"
expect_fail $DMICA cache gc --cache c --bogus
err_has "unknown option --bogus"
expect_fail $DMICA cache du --cache c extra
err_has "unexpected argument 'extra'"
expect_fail $DMICA cache
[ $code = 2 ] || fail "dmica cache: exit $code, expected 2"
err_has "say du, gc or verify"
expect_fail $DMICA cache frob
err_has "unknown subcommand 'frob'"
expect_fail $DMICA cache du --cache nosuch
[ $code = 1 ] || fail "missing cache: exit $code, expected 1"
err_has "nosuch: no cache folder here"
mkdir -p notacache/0123456789abcdef0123456789abcdef
expect_fail $DMICA cache gc --cache notacache
err_has "notacache is not a dmica cache"
[ -d notacache/0123456789abcdef0123456789abcdef ] || fail "gc removed a folder of something that is not a cache"
expect_ok $DMICA cache gc --help
out_has "--older-than AGE"
echo ok
