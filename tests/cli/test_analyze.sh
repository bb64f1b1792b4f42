# dmica analyze on activations a user already has (here: the demo's planted
# activations and SAE, with random token windows for contexts), and dmica top.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy missing"; exit 77; }
expect_ok $DMICA demo --out demo --quiet              # writes demo-data/planted-sae
cat > acts.yaml <<'Y'
nodes:
  acts: {op: planted, params: {rows: 20000, d: 64, atoms: 96, missed: 16, l0: 2, seed: 1}}
  save: {op: npy_sink, inputs: {x: acts}, params: {file: acts.npy}}
Y
expect_ok $DMICA run acts.yaml --out a --quiet
python3 -c "
import numpy as np
np.save('tokens.npy', np.random.default_rng(0).integers(0, 50000, size=(400, 50)).astype(np.int32))
"
expect_ok $DMICA analyze --acts a/acts.npy --sae demo-data/planted-sae --tokens tokens.npy \
    --tokenizer "$ROOT/tests/data/gpt2-tokenizer" --components 24 --seeds 2 --top 5 --out run --quiet
for f in results.json report.html ica_directions.npy ica_filters.npy ica_sources.npy ica_activations.npy \
         ica_top_examples.json sae_stats.json run.json; do
    [ -s run/$f ] || fail "run/$f missing"
done
python3 - <<'P' || fail "analyze's results are wrong"
import json, numpy as np
r = json.load(open("run/results.json"))
assert r["tokens_analyzed"] == 20000 and r["n_ica_components"] == 24
assert np.load("run/ica_sources.npy").shape == (20000, 24)
top = json.load(open("run/ica_top_examples.json"))
e = top["components"][0]["top"][0]
w, p = divmod(e["row"], 50)
assert e["window"] == w and e["position"] == p and p != 0      # BOS positions left out
assert e["token_id"] == int(np.load("tokens.npy")[w, p])
P
expect_ok $DMICA top run --component 3 --k 4
[ "$(grep -c '\[\[' out.txt)" = 4 ] || { cat out.txt; fail "dmica top should print 4 examples with the token marked"; }
expect_ok $DMICA top run --component 3 --bottom
out_has "bottom"
expect_fail $DMICA top run --component 99
err_has "no component 99"
expect_fail $DMICA top nowhere --component 0
err_has "nowhere"
# windows that do not tile the activations are refused before any work
python3 -c "import numpy as np; np.save('bad.npy', np.zeros((7, 50), dtype=np.int32))"
expect_fail $DMICA analyze --acts a/acts.npy --sae demo-data/planted-sae --tokens bad.npy --components 4 --out x
err_has "bad.npy"; err_has "20000 rows"
echo ok
