# Shards and MPI ranks (issue 12):
#   1. 1 rank x 2 threads against 2 ranks x 1 thread (the same total threads) on
#      the demo's analysis at 400k rows in 40 shards, FastICA streamed (its
#      per-iteration sums split by shard and exchanged): wall time, efficiency,
#      and that the products are bitwise the same;
#   2. the time to resume a run killed (SIGKILL) halfway, against a whole run;
#   3. what storing FastICA's input as f16 changes (spill_dtype: f16);
#   4. the disk footprint of the l6 pipeline on stand-ins of the real shapes
#      (random 124M GPT-2, 768 x 24576 SAE), measured on 2 shards and
#      extrapolated to 1M and 100M tokens, under each policy: the shipped l6
#      (x and e spilled in f32) and the 100M pipeline's (GPT-2 and the SAE
#      recomputed, z spilled as f16); beside `dmica plan`'s estimates.
set -eu
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/dmica-shards.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"
MPIRUN="mpirun --allow-run-as-root --oversubscribe"
D="demo --set acts.rows=400000 --set ica.memory=0 --shard 10000 --quiet"
wall() { /usr/bin/time -f %e -o t.txt "$@" >/dev/null 2>err.txt || { cat err.txt >&2; exit 1; }; cat t.txt; }

echo "## Shards and MPI ranks (issue 12)"
echo
if command -v mpirun >/dev/null && "$DMICA" --version >/dev/null && [ -x "$(command -v mpicc)" ]; then
    echo "bench: 1 rank x 2 threads, 2 ranks x 1 thread" >&2
    t1=$(wall "$DMICA" $D --threads 2 --cache c1 --out o1)
    t2=$(wall $MPIRUN -np 2 "$DMICA" $D --threads 1 --cache c2 --out o2)
    t11=$(wall "$DMICA" $D --threads 1 --cache c11 --out o11)
    same=yes
    for f in o11/*.npy; do cmp -s "$f" "o2/$(basename "$f")" || same=no; done
    same2=yes
    for f in o1/*.npy; do cmp -s "$f" "o2/$(basename "$f")" || same2=no; done
    echo "**Ranks.** \`dmica $D\` (40 shards of the planted analysis, FastICA streamed over the"
    echo "whitened data with its sums split by shard), fresh caches, on this $(nproc)-core machine:"
    echo
    echo "| processes | threads each | wall (s) | speed-up | efficiency |"
    echo "|---|---|---|---|---|"
    echo "| 1 | 2 | $t1 | 1.00 | 100% |"
    "$PY" -c "t1, t2 = $t1, $t2; print(f'| 2 (mpirun -np 2) | 1 | {t2} | {t1 / t2:.2f} | {100 * t1 / t2:.0f}% |')"
    echo "| 1 | 1 | $t11 | | |"
    echo
    echo "Products (every .npy) of 2 ranks x 1 thread bitwise those of 1 process x 1 thread: $same; of 1"
    echo "process x 2 threads: $same2 (some kernels add their threads' partial sums in thread order, so"
    echo "the results depend on the threads per rank, not on the number of ranks). The efficiency compares the same total threads:"
    echo "2 ranks pay for a second copy of every node's state, for merging their shards' partials and for"
    echo "exchanging FastICA's sums every iteration, and gain shards that run with no thread"
    echo "synchronisation inside them."
    echo
fi

echo "bench: resume after a kill" >&2
full=$(wall "$DMICA" $D --threads 2 --cache cfull --out ofull)
start=$(date +%s.%N)
"$DMICA" $D --threads 2 --cache ck --out ok >/dev/null 2>&1 & pid=$!
"$PY" -c "import time; time.sleep($full / 2)"
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
cached=$(grep -l '"shard"' ck/*/node.json 2>/dev/null | wc -l)
resume=$(wall "$DMICA" $D --threads 2 --cache ck --out ok)
same=yes
for f in ofull/*.npy; do cmp -s "$f" "ok/$(basename "$f")" || same=no; done
echo "**Resume.** The same run (1 process, 2 threads) takes $full s whole. Killed with SIGKILL after"
echo "half that time (it had committed $cached shard entries), it resumes in $resume s and ends with"
echo "products bitwise equal to the whole run's: $same."
echo

echo "bench: f16 storage of FastICA's input" >&2
sed 's/^  whiten:$/  whiten:\n    spill_dtype: f16/' "$ROOT/pipelines/demo.yaml" > f16.yaml
"$DMICA" run f16.yaml --set acts.rows=400000 --set ica.memory=0 --shard 10000 --quiet --cache cf --out of16 \
    2>err.txt || { cat err.txt >&2; exit 1; }
"$PY" - <<'P'
import json, numpy as np
a, b = json.load(open("ofull/results.json")), json.load(open("of16/results.json"))
da, db = np.load("ofull/ica_directions.npy"), np.load("of16/ica_directions.npy")
c = np.abs(da @ db.T)
best = c.max(axis=1)
ka, kb = a["ica_component_kurtosis_mean"], b["ica_component_kurtosis_mean"]
print("**f16 storage of the whitened residual** (`spill_dtype: f16` on the whitening node, as the 100M")
print("pipeline does): the same 400k-row analysis with FastICA reading f16 instead of f32. f16 keeps 11")
print("significant bits (relative rounding error at most 2^-11 = 4.9e-4 per value).")
print()
print(f"- ICA directions: each f32 direction's best match among the f16 run's has |cos| from {best.min():.6f} to"
      f" {best.max():.6f} (mean {best.mean():.6f});")
print(f"- mean component kurtosis {ka:.4f} (f32) and {kb:.4f} (f16), relative change {abs(ka - kb) / abs(ka):.1e};")
print(f"- FastICA iterations {json.load(open('ofull/ica.json'))['iterations']} (f32) and"
      f" {json.load(open('of16/ica.json'))['iterations']} (f16); verdict {a['verdict']['decision']} and {b['verdict']['decision']}.")
P
echo

echo "bench: l6 disk footprint on stand-ins" >&2
TOKENS=${SHARD_TOKENS:-50000}
"$PY" "$ROOT/tools/make-gpt2" --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --out models/gpt2 >/dev/null
"$PY" "$ROOT/tools/make-sae" --d-in 768 --d-sae 24576 --l0 50 --hook blocks.6.hook_resid_pre \
    --out models/gpt2-small-res-jb/blocks.6.hook_resid_pre >/dev/null
mkdir -p data/openwebtext
i=0
for f in /usr/share/doc/*/copyright /usr/share/common-licenses/*; do
    [ -f "$f" ] || continue
    [ "$(wc -c < "$f")" -gt 1500 ] || continue
    cp "$f" "data/openwebtext/$(printf '%05d' $i).txt"
    i=$((i + 1))
    [ $i -lt 2000 ] || break
done
SH=$((TOKENS / 2))
echo "| policy | pipeline | measured after $TOKENS tokens (2 shards): growing with tokens + with shards + fixed | growing per token | extrapolated to 1M | to 100M (1M-token shards) | \`dmica plan\` at 100M | run time (s) |"
echo "|---|---|---|---|---|---|---|---|"
for policy in l6 l6-100m; do
    p="$ROOT/pipelines/gpt2-small-res-jb-$policy.yaml"
    echo "bench: $policy on $TOKENS tokens" >&2
    secs=$(wall "$DMICA" run "$p" --set text.max_tokens=$TOKENS --shard $SH --cache c-$policy --out o-$policy)
    out_bytes=$(du -sb o-$policy | cut -f1)
    "$DMICA" plan "$p" --set text.max_tokens=100000000 --cache c-plan > plan.txt
    est=$(sed -n 's/^disk: about \([^ ]* [^ ]*\) into.*/\1/p' plan.txt)
    "$PY" - "$policy" "$p" "$TOKENS" "$out_bytes" "$est" "$secs" c-$policy <<'P'
import json, math, os, sys
policy, p, tokens, ob, est, secs, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
# what grows with the tokens (spills, the arrays npy_sink writes and their
# shards' segments), what grows with the shards (partial results), and the rest
scaling = per_shard = fixed = 0
shards = set()
for key in os.listdir(cache):
    d = os.path.join(cache, key)
    nj = os.path.join(d, "node.json")
    if len(key) != 32 or not os.path.isfile(nj):
        continue
    j = json.load(open(nj))
    sink = j.get("op") == "npy_sink"
    for root, _, files in os.walk(d):
        for f in files:
            b = os.path.getsize(os.path.join(root, f))
            if f.endswith(".spill") or f == "segment.npy" or (sink and f.endswith(".npy")):
                scaling += b
            elif "shard" in j:
                per_shard += b
                shards.add(j["shard"]["index"])
            else:
                fixed += b
n = max(len(shards), 1)
def at(t):
    return fixed + scaling / tokens * t + per_shard / n * math.ceil(t / 1e6)
g = lambda x: f"{x / 2**30:.1f} GiB"
name = "x, e spilled (f32); arrays saved" if policy == "l6" else "GPT-2 and SAE recomputed; z spilled (f16)"
print(f"| {name} | {p.split('/')[-1]} | {scaling / 2**20:.0f} + {per_shard / 2**20:.0f} + {fixed / 2**20:.0f} MiB"
      f" (+ {ob / 2**20:.0f} MiB in --out) | {scaling / tokens:.0f} B | {g(at(1e6))} | {g(at(1e8))} | {est} | {secs} |")
P
done
echo
echo "Measured with a random 124M GPT-2 and a random 768 x 24576 SAE on $i English documents"
echo "(\`--set text.max_tokens=$TOKENS --shard $SH\`). The cache's files are counted in three parts: what grows"
echo "with the tokens (spills, the arrays \`npy_sink\` saves and their shards' segments), what grows with"
echo "the number of shards (each shard's partial results: moments, co-moments, SAE statistics, top-k"
echo "lists), and the rest (tensors such as the SAE's decoder, reports). The extrapolation scales the"
echo "first by the tokens and the second by the shards of 1M tokens (100 at 100M). \`dmica plan\`"
echo "estimates the run's disk from the pipeline alone (rows bounded by \`max_tokens\`) before it starts;"
echo "it counts spills, tensors and saved arrays, not the shards' partials."
echo
echo "Command: tools/bench.d/70-shards.sh (\`BENCH_ONLY=70-shards tools/bench\`)."
