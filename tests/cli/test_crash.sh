# Crash consistency (issue 11, item 6): the demo (planted data, SAE, statistics,
# PCA, whitening, FastICA, the comparison and the report: many groups, spills
# and tensors) is killed with SIGKILL at seeded random moments between 0.2 s
# and the length of an uninterrupted run (4 times, or more until 2 landed while
# entries were built); each time the run is started again
# on what the killed one left, and must end with the products of the
# uninterrupted run and no temporary folder in the cache.
. "$ROOT/tests/cli/lib.sh"
. "$ROOT/tests/cli/products.sh"
ROWS=80000
POINTS=4     # kills at least; more (up to TRIES) until 2 landed while entries were built
TRIES=10
SEED=1
demo() { exec $DMICA demo --set acts.rows=$ROWS --quiet "$@"; }
now() { date +%s.%N; }

t0=$(now)
(demo --out ref --cache cref) >out.txt 2>err.txt || { cat err.txt; fail "the uninterrupted run failed"; }
t1=$(now)
T=$(python3 -c "print(max(0.5, $t1 - $t0))")
points=$(python3 -c "
import random
r = random.Random($SEED)
print(' '.join('%.2f' % r.uniform(0.2, $T) for _ in range($TRIES)))")
echo "uninterrupted run: $T s; SIGKILL at some of $points s"

# a later run may be faster than the first (warm page cache), and its kill come
# after it ended: more kills are tried until two landed mid-run
mid_run=0 tried=0
for t in $points; do
    [ $tried -ge $POINTS ] && [ $mid_run -ge 2 ] && break
    tried=$((tried + 1))
    rm -rf c o
    demo --out o --cache c >out.txt 2>err.txt & pid=$!
    sleep "$t"
    if kill -KILL $pid 2>/dev/null; then
        wait $pid 2>/dev/null
        left=$(ls -A c/tmp 2>/dev/null | wc -l)
        [ "$left" -gt 0 ] && mid_run=$((mid_run + 1))
        echo "killed at $t s: $left temporary folders left, $(ls c 2>/dev/null | grep -cE '^[0-9a-f]{32}$') entries complete"
    else
        wait $pid || { cat err.txt; fail "the run to kill at $t s failed on its own"; }
        echo "at $t s the run had already ended"
    fi
    expect_ok $DMICA demo --set acts.rows=$ROWS --quiet --out o --cache c
    cache_consistent c
    same_products ref o
done
# the test means something only if kills landed while entries were being built
[ $mid_run -ge 2 ] || fail "only $mid_run of $tried kills landed while the run built entries"
echo ok
