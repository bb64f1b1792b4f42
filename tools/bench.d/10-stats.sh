# Statistics pass (moments + covariance + PCA) over synthetic rows 768 wide:
# rows/s and peak RSS at 1M and 10M rows under the same memory budget. Memory
# must not grow with the number of rows (RSS ratio <= 1.1).
set -eu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/stats.yaml" <<'Y'
name: bench-stats
memory: 512M
nodes:
  source: {op: synthetic, params: {rows: 1000000, cols: 768, seed: 1, factors: 16}}
  moments: {op: moments, inputs: {x: source}}
  covariance: {op: covariance, inputs: {x: source}}
  pca: {op: pca, inputs: {covariance: covariance.covariance}}
Y
echo "## Statistics pass (issue 2)"
echo
echo "\`synthetic (768 wide) -> moments, covariance -> pca\`, budget 512M, $(nproc) threads, fresh cache each run."
echo
echo "| rows | seconds | rows/s | peak RSS (MB) |"
echo "|---|---|---|---|"
rss1=0
for rows in 1000000 10000000; do
    rm -rf "$work/cache"
    echo "bench: stats over $rows rows" >&2
    /usr/bin/time -f "%e %M" -o "$work/time" "$DMICA" run "$work/stats.yaml" --cache "$work/cache" \
        --set source.rows=$rows --quiet
    read secs kb < "$work/time"
    rate=$(awk -v r=$rows -v s=$secs 'BEGIN { printf "%.0f", r / s }')
    echo "| $rows | $secs | $rate | $((kb / 1024)) |"
    [ $rss1 -ne 0 ] || rss1=$kb
    rss2=$kb
done
echo
awk -v a=$rss1 -v b=$rss2 'BEGIN { printf "RSS ratio 10M / 1M rows: %.3f (target <= 1.1)\n", b / a }'
echo
echo "Command: \`/usr/bin/time -f '%e %M' dmica run stats.yaml --set source.rows=N --quiet\` (tools/bench.d/10-stats.sh)."
