# topk: the k largest and smallest rows per column, against numpy, with token
# contexts read by row from the windows' spill and decoded with GPT-2's vocab.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
python3 - <<'P'
import numpy as np
rng = np.random.default_rng(3)
W, T, C = 50, 16, 3
win = rng.integers(0, 50000, size=(W, T)).astype(np.int32)
win[:, 0] = 50256                      # BOS
np.save("windows.npy", win)
v = rng.standard_t(3, size=(W * T, C)).astype(np.float32)
v[0::T, :] = 1000.0                    # BOS rows would win if not skipped
np.save("values.npy", v)
P
cat > p.yaml <<Y
name: topk
memory: 70M
nodes:
  win: {op: npy, params: {path: windows.npy, dtype: i32}, spill: always}
  vals: {op: npy, params: {path: values.npy}}
  top:
    op: topk
    inputs: {values: vals, windows: win}
    params: {k: 7, context: 3, tokenizer: $ROOT/tests/data/gpt2-tokenizer}
Y
expect_ok $DMICA run p.yaml --out out
python3 - <<P || fail "topk disagrees with numpy"
import json, numpy as np
v = np.load("values.npy"); win = np.load("windows.npy").astype(int); T = 16
js = json.load(open("out/topk.json"))
mask = (np.arange(len(v)) % T) != 0
rows = np.arange(len(v))[mask]
for c in js["components"]:
    j = c["component"]
    col = v[mask, j]
    order = np.argsort(-col, kind="stable")[:7]
    assert [e["row"] for e in c["top"]] == list(rows[order]), (j, [e["row"] for e in c["top"]], rows[order])
    order = np.argsort(col, kind="stable")[:7]
    assert [e["row"] for e in c["bottom"]] == list(rows[order])
    for e in c["top"] + c["bottom"]:
        w, p = divmod(e["row"], T)
        assert e["window"] == w and e["position"] == p
        assert e["token_id"] == win[w, p]
        lo = max(0, p - 3)
        assert e["context_ids"] == list(win[w, lo:min(T, p + 4)])
        assert abs(e["value"] - v[e["row"], j]) == 0
        assert isinstance(e["token"], str) and isinstance(e["left"], str)
    h = c["histogram"]
    assert sum(h["counts"]) + h["below"] + h["above"] == mask.sum()
    assert h["lo"] <= col.min() and h["hi"] >= col.max(), (h["lo"], h["hi"], col.min(), col.max())
    # the random sample (k rows by default): the rows of the k smallest keys
    # mix(seed + row * g) ^ mix(seed + ~column * h) (seed 0, mix splitmix64's
    # finaliser), sorted by row, BOS rows left out
    M = (1 << 64) - 1
    def mix(z):
        z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
        z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
        return z ^ (z >> 31)
    def key(row):
        return mix((row * 0x9e3779b97f4a7c15) & M) ^ mix(((M ^ j) * 0xc2b2ae3d27d4eb4f) & M)
    want = sorted(sorted(rows, key=lambda r: (key(int(r)), r))[:7])
    assert [e["row"] for e in c["random"]] == want, (j, [e["row"] for e in c["random"]], want)
    for e in c["random"]:
        assert e["value"] == v[e["row"], j] and e["context_ids"] == list(win[e["window"], max(0, e["position"] - 3):e["position"] + 4])
    # the fine bins are 1/4096 of the span: each value lands in the right output bin or a neighbour
    ref, _ = np.histogram(col, bins=len(h["counts"]), range=(h["lo"], h["hi"]))
    assert np.abs(np.array(h["counts"]) - ref).sum() <= 0.02 * len(col), (h["counts"], ref)
print("ok")
P
# every example keeps its column's values at its context's rows (what exports
# read when the run keeps no sources): the same in one chunk, in chunks that
# cut windows (a context's rows then come from the chunk before, or after),
# and in shards of whole windows; shards that cut windows leave the rows across
# the cut unknown (null), and only those
sed 's/^memory: 70M/memory: 70M\nchunk: 72/' p.yaml > chunked.yaml
expect_ok $DMICA run chunked.yaml --out chunked --cache cc
expect_ok $DMICA run p.yaml --out sharded --cache cs --shard 96
expect_ok $DMICA run p.yaml --out cut --cache cx --shard 100
python3 - <<'P' || fail "the examples' context values are wrong"
import json, numpy as np
v = np.load("values.npy"); T = 16
def check(d, shard=None):
    js = json.load(open(d + "/topk.json")); nulls = 0
    for c in js["components"]:
        for e in c["top"] + c["bottom"] + c["random"]:
            lo = e["context_start"]; rows = e["row"] - e["position"] + lo + np.arange(len(e["context_ids"]))
            cv = e["context_values"]
            assert len(cv) == len(rows) and cv[e["position"] - lo] == e["value"]
            for r, x in zip(rows, cv):
                if x is None:
                    assert shard and r // shard != e["row"] // shard, (d, e["row"], r)
                    nulls += 1
                else:
                    assert x == v[r, c["component"]], (d, e["row"], r, x, v[r, c["component"]])
    return js, nulls
one, _ = check("out")
for d in ["chunked", "sharded"]:
    js, nulls = check(d)
    assert js == one and nulls == 0, d
js, nulls = check("cut", 100)
assert nulls > 0, "no context crossed a shard's edge: the test would not see a missing value"
print("context values: ok;", nulls, "values across the cut shards' edges unknown")
P
# the decoded text is GPT-2's: a window of known ids decodes to known text
python3 - <<'P'
import numpy as np
win = np.full((2, 8), 50256, dtype=np.int32)
win[1, 1:6] = [15496, 995, 11, 257, 1332]          # "Hello world, a test"
np.save("windows.npy", win)
v = np.zeros((16, 1), dtype=np.float32); v[11, 0] = 5.0   # window 1, position 3: ","
np.save("values.npy", v)
P
expect_ok $DMICA run p.yaml --out out2 --set top.k=1 --set top.context=2
python3 - <<'P' || fail "decoded context is wrong"
import json
e = json.load(open("out2/topk.json"))["components"][0]["top"][0]
assert (e["left"], e["token"], e["right"]) == ("Hello world", ",", " a test"), e
P
# changing k reruns only topk; the windows spill is reused (read by row)
expect_ok $DMICA run p.yaml --out out3 --set top.k=2 --set top.context=2
grep -E '^  win .*ran' err.txt && fail "windows should come from the cache"
cache_consistent
echo ok
