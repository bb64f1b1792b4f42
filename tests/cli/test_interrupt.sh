# Interrupted runs leave nothing behind (issue 11, F1): SIGINT and SIGTERM stop
# a run with exit 130 and 143, a message, and no temporary folder; after a
# kill -9 the next run removes the folders of the dead process and ends with
# the results of an uninterrupted run; a live run's temporary folder is never
# taken (the folders are named with the pid and its start time).
. "$ROOT/tests/cli/lib.sh"
. "$ROOT/tests/cli/products.sh"
ROWS=100000
demo() { $DMICA demo --set acts.rows=$ROWS --quiet "$@"; }
# A script's background jobs start with SIGINT ignored (POSIX sh), and dmica
# leaves an ignored signal ignored: start them with its default action (exec:
# $! is then the pid of dmica itself, not of a subshell).
env --default-signal=INT true 2>/dev/null || { echo "env has no --default-signal (coreutils < 8.31)"; exit 77; }
bg_demo() { exec env --default-signal=INT,TERM $DMICA demo --set acts.rows=$ROWS --quiet "$@"; }

# Waits (up to 30 s) until run $1 has started building entries in cache $2.
wait_tmp() {
    i=0
    while [ -z "$(ls -A "$2/tmp" 2>/dev/null)" ]; do
        kill -0 "$1" 2>/dev/null || fail "the run ended before it built anything in $2/tmp"
        i=$((i + 1)); [ $i -lt 600 ] || fail "no temporary folder in $2/tmp after 30 s"
        sleep 0.05
    done
}

expect_ok demo --out ref --cache cref

# SIGINT: exit 130, the message, no temporary folder, complete entries only;
# the rerun finishes from what was committed and gives the same results
bg_demo --out o1 --cache c1 >out.txt 2>err.txt & pid=$!
wait_tmp $pid c1
sleep 0.3
kill -INT $pid
wait $pid; code=$?
[ $code = 130 ] || { cat err.txt; fail "SIGINT: exit $code, expected 130"; }
err_has "interrupted by SIGINT"
err_has "temporary files are removed"
cache_consistent c1
ls o1/*.tmp.* 2>/dev/null && fail "temporary files left in o1"
expect_ok demo --out o1 --cache c1
cache_consistent c1
same_products ref o1

# SIGTERM: exit 143
bg_demo --out o2 --cache c2 >out.txt 2>err.txt & pid=$!
wait_tmp $pid c2
sleep 0.3
kill -TERM $pid
wait $pid; code=$?
[ $code = 143 ] || { cat err.txt; fail "SIGTERM: exit $code, expected 143"; }
err_has "interrupted by SIGTERM"
cache_consistent c2

# kill -9 leaves temporary folders; the next run removes them and ends with the
# uninterrupted run's results
bg_demo --out o3 --cache c3 >out.txt 2>err.txt & pid=$!
wait_tmp $pid c3
sleep 0.3
kill -KILL $pid
wait $pid 2>/dev/null
[ -n "$(ls -A c3/tmp)" ] || fail "kill -9 left no temporary folder (the test needs one)"
expect_ok demo --out o3 --cache c3
cache_consistent c3
same_products ref o3

# A live process's folders stay, a dead one's go: folders named with the pid and
# start time of a live `sleep`, of a process that has ended, and of the live pid
# with another start time (a reused pid); an old-style name "<key>.<pid>.<n>"
# and a name dmica does not make
key=0123456789abcdef0123456789abcdef
sleep 60 & live=$!
start=$(cut -d' ' -f22 /proc/$live/stat)
sh -c 'exit 0' & dead=$!
wait $dead
mkdir -p c4/tmp/$key.$live.$start.3 c4/tmp/$key.$dead.$start.3 c4/tmp/$key.$live.$((start + 1)).3 \
    c4/tmp/$key.$dead.3 c4/tmp/$key.$live.2 c4/tmp/notes
echo x > c4/tmp/$key.$live.$start.3/part.spill
expect_ok $DMICA cache du --cache c4
out_has "temporary: 3 folders of runs in progress"
out_has "3 of runs that are gone"
expect_ok demo --out o4 --cache c4 --set acts.rows=2000
for d in $key.$live.$start.3 $key.$live.2 notes; do
    [ -d c4/tmp/$d ] || fail "the run removed tmp/$d, which belongs to a live process (or is not dmica's)"
done
for d in $key.$dead.$start.3 $key.$live.$((start + 1)).3 $key.$dead.3; do
    [ -d c4/tmp/$d ] && fail "the run left tmp/$d, whose process is gone"
done
[ -f c4/tmp/$key.$live.$start.3/part.spill ] || fail "a live run's file was touched"
kill $live
wait $live 2>/dev/null
expect_ok demo --out o4 --cache c4 --set acts.rows=2000
for d in $key.$live.$start.3 $key.$live.2; do
    [ -d c4/tmp/$d ] && fail "tmp/$d stayed after its process ended"
done
[ -d c4/tmp/notes ] || fail "tmp/notes is not dmica's and must stay"
echo ok
