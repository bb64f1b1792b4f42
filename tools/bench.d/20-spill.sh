# Spill write (io_uring write-behind, fsync at close) and replay (checksums
# verified) beside dd writing and reading the same number of bytes on the same
# disk in the same run. Target: at least 80% of dd.
set -eu
GB=${SPILL_BENCH_GB:-4}
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/dmica-spill.XXXXXX")
trap 'rm -rf "$dir"' EXIT
bin="$ROOT/build/tools/spill-bench"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
echo "## Spill files against dd (issue 2)"
echo
echo "$GB GB of float32 rows (768 wide, 4096-row chunks) in $(df -h "$dir" | awk 'NR==2 {print $1}'); page cache dropped before each read when possible."
echo
echo "| run | spill write GB/s | dd write GB/s | write ratio | spill replay GB/s | dd read GB/s | replay ratio |"
echo "|---|---|---|---|---|---|---|"
for run in 1 2 3; do
    echo "bench: spill run $run" >&2
    drop
    set -- $("$bin" "$dir" "$GB")
    sw=$2 sr=$4 bytes=$6
    rm -f "$dir"/bench.*
    count=$(awk -v b=$bytes 'BEGIN { printf "%d", b / 4194304 }')
    drop
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$dir/dd" bs=4M count=$count conv=fsync status=none
    t1=$(date +%s.%N)
    drop
    dd if="$dir/dd" of=/dev/null bs=4M status=none
    t2=$(date +%s.%N)
    rm -f "$dir/dd"
    dw=$(awk -v b=$bytes -v a=$t0 -v c=$t1 'BEGIN { printf "%.3f", b / (c - a) / 1e9 }')
    dr=$(awk -v b=$bytes -v a=$t1 -v c=$t2 'BEGIN { printf "%.3f", b / (c - a) / 1e9 }')
    echo "| $run | $sw | $dw | $(awk -v a=$sw -v b=$dw 'BEGIN { printf "%.0f%%", 100 * a / b }') | $sr | $dr | $(awk -v a=$sr -v b=$dr 'BEGIN { printf "%.0f%%", 100 * a / b }') |"
done
echo
echo "Commands: \`build/tools/spill-bench DIR $GB\` against \`dd if=/dev/zero of=F bs=4M count=N conv=fsync\` and \`dd if=F of=/dev/null bs=4M\` (tools/bench.d/20-spill.sh)."
