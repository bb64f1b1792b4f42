# Shards (issue 12): the demo in 10 shards of 10000 rows; one shard gives bitwise
# the products of an unsharded run; a run killed with SIGKILL halfway resumes
# with only the shards it had not finished (the finished ones are not touched)
# and ends with the products of an uninterrupted run; `plan` says how many
# shards are cached; bad shard sizes are refused; a run whose spills cannot fit
# the disk is refused before it starts, with both numbers; `spill: recompute`
# gives the products of a spilled run and spills less.
. "$ROOT/tests/cli/lib.sh"
. "$ROOT/tests/cli/products.sh"
ROWS=100000
demo() { $DMICA demo --set acts.rows=$ROWS --quiet "$@"; }

# one shard (more rows per shard than rows) is the unsharded computation
expect_ok demo --shard 0 --out u --cache cu
expect_ok demo --shard 1M --out one --cache c1
same_products u one

# 10 shards: an uninterrupted run, its progress and its plan
expect_ok $DMICA demo --set acts.rows=$ROWS --shard 10000 --out ref --cache cref
err_has "shard 10/10"

# killed halfway (SIGKILL: no cleanup at all), then resumed
exec_demo() { exec $DMICA demo --set acts.rows=$ROWS --shard 10000 --quiet "$@"; }
exec_demo --out o --cache c >/dev/null 2>&1 & pid=$!
shards() { # the shard entries of cache $1: "key mtime" lines
    for e in "$1"/*/node.json; do
        grep -q '"shard"' "$e" 2>/dev/null && echo "$(basename "$(dirname "$e")") $(stat -c %Y.%N "$e")"
    done | sort
}
i=0
while [ "$(shards c | wc -l)" -lt 12 ]; do
    kill -0 $pid 2>/dev/null || fail "the run ended before 12 shard entries were made"
    i=$((i + 1)); [ $i -lt 1200 ] || fail "no shard entries after 60 s"
    sleep 0.05
done
kill -9 $pid
wait $pid 2>/dev/null
shards c > before.txt
n_before=$(wc -l < before.txt)
# the plan says how many shards of the first pass are cached
$DMICA plan --set acts.rows=$ROWS --shard 10000 --cache c "$ROOT/pipelines/demo.yaml" > out.txt 2>err.txt \
    || fail "plan after the kill: $(cat err.txt)"
grep -E "^  sae .* of 10 shards cached\)" out.txt >/dev/null || { cat out.txt; fail "plan does not count sae's cached shards"; }
expect_ok demo --shard 10000 --out o --cache c
cache_consistent c
same_products ref o
# every shard entry that existed before the resume is untouched (not computed again)
shards c > after.txt
join before.txt after.txt | awk '$2 != $3 {print; bad = 1} END {exit bad}' || fail "the resume rewrote finished shards"
[ "$(join before.txt after.txt | wc -l)" -eq "$n_before" ] || fail "shard entries were lost by the resume"
[ "$(wc -l < after.txt)" -gt "$n_before" ] || fail "the resume made no new shards"
expect_ok $DMICA plan --set acts.rows=$ROWS --shard 10000 --cache c "$ROOT/pipelines/demo.yaml"
grep -q "stale" out.txt && fail "stale nodes after the resume: $(grep stale out.txt)"

# --force reruns a node's shards too, with the same results
expect_ok demo --shard 10000 --out f --cache c --force residual_moments
same_products ref f

# bad shard sizes
expect_fail $DMICA demo --shard lots
err_has "--shard"
[ $code -eq 2 ] || fail "--shard lots: exit $code, expected 2"
expect_fail $DMICA demo --shard -5
err_has "--shard"
printf 'shard: 1.5\nnodes:\n  a: {op: synthetic, params: {rows: 10, cols: 2}}\n' > bad.yaml
expect_fail $DMICA plan bad.yaml
err_has "bad.yaml:1: shard must be a number of rows"

# a run that cannot fit the disk is refused before it writes anything
expect_fail $DMICA demo --set acts.rows=100000000000 --out big --cache cbig
err_has "this run needs about"
err_has "free"
[ -e big ] && fail "a refused run made its output folder"
[ -n "$(ls cbig 2>/dev/null | grep -v -e tmp -e index -e filehash)" ] && fail "a refused run wrote cache entries"
expect_ok $DMICA plan --set acts.rows=100000000000 --cache cbig "$ROOT/pipelines/demo.yaml"
out_has "not enough"

# spill: recompute: the same products; the SAE's residual is not spilled but
# recomputed in the later passes, so the plan's disk estimate is smaller
sed 's/^  sae:$/  sae:\n    spill: recompute/' "$ROOT/pipelines/demo.yaml" > recompute.yaml
grep -q "spill: recompute" recompute.yaml || fail "could not write recompute.yaml"
expect_ok $DMICA plan --set acts.rows=$ROWS --shard 10000 --cache cr recompute.yaml
disk_r=$(grep "^disk:" out.txt)
expect_ok $DMICA plan --set acts.rows=$ROWS --shard 10000 --cache cr2 "$ROOT/pipelines/demo.yaml"
disk_s=$(grep "^disk:" out.txt)
expect_ok $DMICA run recompute.yaml --set acts.rows=$ROWS --shard 10000 --quiet --out r --cache cr
same_products ref r
python3 - "$disk_r" "$disk_s" <<'P' || fail "recompute does not spill less: $disk_r / $disk_s"
import re, sys
def mib(line):
    v, u = re.search(r"spills ([0-9.]+) (\w+)", line).groups()
    return float(v) * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[u]
r, s = (mib(x) for x in sys.argv[1:])
assert r < s * 0.8, (r, s)
P
