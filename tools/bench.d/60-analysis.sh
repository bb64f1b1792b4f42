# The plan's pipeline (pipelines/gpt2-small-res-jb-l6.yaml) exactly as shipped,
# on stand-ins of the real shapes: a random 124M GPT-2 (tools/make-gpt2), a
# random 768 x 24576 SAE (tools/make-sae), and 100k tokens of English text
# (Debian's copyright files, one document each, as OpenWebText would be).
# Records every stage's time (run.json), the peak RSS against the budget, and an
# estimate for the plan's 1M tokens.
set -eu
TOKENS=${ANALYSIS_TOKENS:-100000}
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/dmica-analysis.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"
echo "bench: making a 124M GPT-2 and a 24576-feature SAE" >&2
"$PY" "$ROOT/tools/make-gpt2" --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --out models/gpt2 >/dev/null
"$PY" "$ROOT/tools/make-sae" --d-in 768 --d-sae 24576 --l0 50 --hook blocks.6.hook_resid_pre \
    --out models/gpt2-small-res-jb/blocks.6.hook_resid_pre >/dev/null
mkdir -p data/openwebtext
i=0
for f in /usr/share/doc/*/copyright /usr/share/common-licenses/*; do
    [ -f "$f" ] || continue
    [ "$(wc -c < "$f")" -gt 1500 ] || continue     # a window needs 127 tokens of a document
    cp "$f" "data/openwebtext/$(printf '%05d' $i).txt"
    i=$((i + 1))
    [ $i -lt 2000 ] || break
done
echo "bench: running the l6 pipeline on $TOKENS tokens ($i documents)" >&2
budget=$(awk '/^memory:/ {print $2}' "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml")
/usr/bin/time -f "%e %M" -o time.txt "$DMICA" run "$ROOT/pipelines/gpt2-small-res-jb-l6.yaml" \
    --set text.max_tokens=$TOKENS --out run --quiet 2> run.log || { tail -20 run.log >&2; exit 1; }
read secs kb < time.txt
echo "## The plan's pipeline on stand-ins of the real shapes (issue 6)"
echo
echo "\`dmica run pipelines/gpt2-small-res-jb-l6.yaml --set text.max_tokens=$TOKENS\` with a random 124M GPT-2, a random"
echo "768 x 24576 SAE (L0 target 50) and $i English documents (truncate mode: BOS + 127 tokens each); $(nproc) threads."
echo
echo "Total $secs s; peak RSS $((kb / 1024)) MB against the pipeline's budget of $budget."
echo
"$PY" - "$TOKENS" <<'P'
import json, sys
tokens = int(sys.argv[1])
run = json.load(open("run/run.json"))
res = json.load(open("run/results.json"))
# stages whose work grows with the number of tokens scale by 1M / tokens; the
# rest (PCA of a 768 x 768 covariance, the comparison, the report) do not
fixed = {"pca", "ica_compare", "report"}
scale = 1_000_000 / tokens
print("| node | operator | seconds | estimate at 1M tokens (s) |")
print("|---|---|---|---|")
tot = est = 0.0
for n in run["nodes"]:
    s = n["seconds"] or 0.0
    e = s if n["op"] in fixed else s * scale
    tot += s; est += e
    print(f"| {n['node']} | {n['op']} | {s:.1f} | {e:.0f} |")
print(f"| **sum** | | **{tot:.1f}** | **{est:.0f}** (about {est / 60:.0f} min) |")
print()
ica = res.get("ica", {})
print(f"tokens analysed: {res['tokens_analyzed']}; FVU {res['fraction_variance_unexplained_by_sae']:.3f}; "
      f"SAE L0 {res.get('sae_l0', float('nan')):.1f}; verdict {res['verdict']['decision']} (random weights: meaningless). "
      "FastICA's time depends on its iterations to converge, which this linear estimate assumes unchanged.")
P
echo
echo "Node seconds are the engine's own (run.json): each node's time in its own callbacks (what its consumers"
echo "take is theirs), so they add up to the run. Command: tools/bench.d/60-analysis.sh (ANALYSIS_TOKENS=$TOKENS)."
