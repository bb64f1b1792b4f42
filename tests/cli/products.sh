# same_products REF DIR (sourced after lib.sh): DIR holds the products of REF,
# the results folder of an uninterrupted run: every .npy byte for byte, every
# JSON file (but run.json, which says what ran) equal once times are dropped.
same_products() {
    for f in "$1"/*.npy; do
        cmp -s "$f" "$2/$(basename "$f")" || fail "$2/$(basename "$f") differs from $f (an uninterrupted run's)"
    done
    python3 - "$1" "$2" <<'P' || fail "$2: JSON products differ from those of an uninterrupted run ($1)"
import json, os, sys
def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items()
                if k not in ("timings", "time_per_stage", "seconds") and not k.endswith("_s")}
    if isinstance(o, list):
        return [strip(x) for x in o]
    return o
ref, new = sys.argv[1:]
for f in sorted(os.listdir(ref)):
    if f.endswith(".json") and f != "run.json":
        if not os.path.exists(os.path.join(new, f)):
            sys.exit(f + " is missing")
        a, b = (strip(json.load(open(os.path.join(d, f)))) for d in (ref, new))
        if a != b:
            sys.exit(f + " differs")
P
}
