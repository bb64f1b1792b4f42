# MPI ranks (issue 12): `mpirun -np N dmica run` gives bitwise the products of
# one process, for N = 1, 2, 3, on
#   - the demo in 8 shards with FastICA streamed (its per-iteration sums split
#     by shard and exchanged between ranks), each rank with its own cache folder,
#     and again with one shared folder;
#   - tiny-gpt2.yaml: text -> GPT-2 -> SAE -> statistics -> PCA -> FastICA -> top-k;
#   - demo-overcomplete.yaml with RICA streamed (its L-BFGS evaluations' sums
#     split by shard and exchanged between ranks);
# a failing rank stops every rank with its message ("rank 1: ..."); a run whose
# rank is killed resumes, with another number of ranks, to the same products.
. "$ROOT/tests/cli/lib.sh"
. "$ROOT/tests/cli/products.sh"
[ "${DMICA_MPI:-0}" = 1 ] || { echo "dmica built without MPI (no mpicc)"; exit 77; }
command -v mpirun >/dev/null 2>&1 || { echo "no mpirun"; exit 77; }
have_numpy || { echo "numpy missing"; exit 77; }
MPIRUN=${DMICA_MPIRUN:-mpirun --allow-run-as-root --oversubscribe}
mpi() { n=$1; shift; env $MPIRUN -np "$n" "$@"; }

# --- the demo, FastICA streamed, 8 shards -------------------------------------
D="demo --set acts.rows=50000 --set ica.memory=0 --shard 7000 --threads 1 --quiet"
expect_ok $DMICA $D --out ref --cache cref
RANKS="1 2 3"; [ "${DMICA_SAN:-0}" = 1 ] && RANKS=2
for n in $RANKS; do
    C=sep$n; export C
    if [ $n -gt 1 ]; then # (one rank: a cache per rank is the shared cache below)
    mpi $n sh -c 'exec "$0" "$@" --cache "$C-$OMPI_COMM_WORLD_RANK"' $DMICA $D --out sep$n >out.txt 2>err.txt \
        || { cat err.txt; fail "mpirun -np $n (a cache per rank)"; }
    same_products ref sep$n
    fi
    mpi $n $DMICA $D --out shared$n --cache sc$n >out.txt 2>err.txt || { cat err.txt; fail "mpirun -np $n (shared)"; }
    same_products ref shared$n
    cache_consistent sc$n
done
python3 -c "
import json
j = json.load(open('sep$n/ica.json'))
assert j['rows'] == 50000, j['rows']" || fail "ica.json does not count every rank's rows"
# with a cache per rank, every folder ends up with the run's entries
ls sep$n-0 > ls0.txt; ls sep$n-$((n - 1)) > ls2.txt
diff ls0.txt ls2.txt || fail "the last rank's cache folder differs from rank 0's"
diff -r sep$n-0/index sep$n-$((n - 1))/index | grep -v "\.shards" | grep -q . && fail "the last rank's index differs from rank 0's"

# under the sanitizers (make test-san) the demo's ranks above are the check
[ "${DMICA_SAN:-0}" = 1 ] && exit 0

# --- text -> GPT-2 -> SAE -> statistics -> FastICA -> top-k ----------------------
mkdir -p build/tiny tests/data
ln -s "$ROOT/tests/data/tiny-corpus" tests/data/tiny-corpus
python3 "$ROOT/tools/make-gpt2" --n-embd 32 --n-layer 2 --n-head 2 --n-positions 128 --vocab-size 50257 \
    --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --seed 1 --out build/tiny/gpt2 >/dev/null || fail "make-gpt2"
python3 "$ROOT/tools/make-sae" --d-in 32 --d-sae 256 --l0 8 --input-scale 0.36 --hook blocks.1.hook_resid_pre \
    --seed 2 --out build/tiny/sae >/dev/null || fail "make-sae"
T="run $ROOT/pipelines/tiny-gpt2.yaml --shard 2000 --threads 1 --quiet --set ica.memory=0 --set causal.tokens=64"
expect_ok $DMICA $T --out tref --cache tcref
for n in 2 3; do
    mpi $n $DMICA $T --out t$n --cache tc$n >out.txt 2>err.txt || { cat err.txt; fail "tiny-gpt2, mpirun -np $n"; }
    same_products tref t$n
done
[ -s t3/ica_top_examples.json ] || fail "no top-k examples from the ranks"

# --- RICA streamed: each L-BFGS evaluation's sums split by shard and merged -------
R="run $ROOT/pipelines/demo-overcomplete.yaml --set rica.memory=0 --set rica.seeds=1 --set rica.max_iter=30"
R="$R --shard 5000 --threads 1 --quiet"
expect_ok $DMICA $R --out rref --cache rcref
mpi 3 $DMICA $R --out r3 --cache rc3 >out.txt 2>err.txt || { cat err.txt; fail "demo-overcomplete, mpirun -np 3"; }
same_products rref r3
python3 -c "
import json
j = json.load(open('r3/rica.json'))
assert not j['in_ram'] and j['rows'] == 20000 and j['passes'] > 30, (j['in_ram'], j['rows'], j['passes'])" ||
    fail "RICA did not stream every rank's rows"

# --- a failing rank: every rank stops with its message ----------------------------
: > notafolder
C=badc; export C
expect_fail mpi 2 sh -c '[ "$OMPI_COMM_WORLD_RANK" = 1 ] && C=notafolder; exec "$0" "$@" --cache "$C"' \
    $DMICA $D --out bad
err_has "rank 1: "
[ -e bad/results.json ] && fail "a failed run wrote results"

# --- a rank killed halfway; resumed with another number of ranks -----------------
E="demo --set acts.rows=200000 --shard 10000 --threads 1 --quiet"
expect_ok $DMICA $E --out kref --cache kcref
mpi 2 $DMICA $E --out k --cache kc >/dev/null 2>&1 & mpid=$!
i=0
while [ "$(grep -l '"shard"' kc/*/node.json 2>/dev/null | wc -l)" -lt 8 ]; do
    kill -0 $mpid 2>/dev/null || fail "the 2-rank run ended before 8 shard entries"
    i=$((i + 1)); [ $i -lt 1200 ] || fail "no shard entries after 60 s"
    sleep 0.05
done
pkill -9 -f "dmica demo --set acts.rows=200000" 2>/dev/null
wait $mpid 2>/dev/null
i=0 # a process killed with SIGKILL may take a moment to go
while pgrep -f "dmica demo --set acts.rows=200000" >/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || fail "the killed ranks are still there after 30 s"
    sleep 0.05
done
expect_ok mpi 3 $DMICA $E --out k --cache kc
same_products kref k
cache_consistent kc
