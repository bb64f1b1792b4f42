# The text source: every input format gives the windows an independent Python
# transcription of SAELens's windowing (truncate and pack) makes from the ids
# `dmica tokenize` gives each document; archives (tar, gzip, xz, zstd, and
# OpenWebText's tar.xz of .xz tar members), .jsonl, nanoGPT .bin, integer .npy;
# globs; max_tokens; shards that partition the windows; cache keys that follow
# the files; and clear errors for an empty corpus, corrupt archives, bad JSONL.
. "$ROOT/tests/cli/lib.sh"
have_numpy || { echo "numpy not available"; exit 77; }
TOK=$ROOT/tests/data/gpt2-tokenizer

# ---- fixtures: six documents, one with invalid UTF-8, one with the literal
# <|endoftext|>, one too short for a window of 8 tokens
mkdir docs
python3 - <<'P'
docs = [
    b"The quick brown fox jumps over the lazy dog. It wasn't the first time; they'd met before.\n\nAgain.",
    b"def f(x):\n\treturn x * 2  # code, tabs\r\nprint(f(21))\n",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8, \u0645\u0631\u062d\u0628\u0627 \U0001F468\u200d\U0001F469\u200d\U0001F467 numbers 12345 67.89".encode(),
    b"bad bytes \xff\xfe here \xc3( and \xe2\x82 truncated sequences, then plain text again for a while.",
    b"Short one.",
    b"<|endoftext|>A document that starts with the end-of-text marker, and goes on for some words.",
]
for i, d in enumerate(docs):
    open(f"docs/d{i}.txt", "wb").write(d)
P
for i in 0 1 2 3 4 5; do
    $DMICA tokenize --tokenizer "$TOK" docs/d$i.txt > ids$i.txt || fail "tokenize d$i"
done

# windows.py MODE CTX BOS IDS...: the expected windows as expected.npy
cat > windows.py <<'P'
import os, sys, numpy as np
B = int(os.environ.get("B", 50256))
mode, ctx, bos, files = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
docs = [[int(x) for x in open(f).read().split()] for f in files]
out = []
if mode == "truncate":
    for t in docs:
        if bos and t and t[0] != B:
            if len(t) >= ctx - 1:
                out.append([B] + t[:ctx - 1])
        elif len(t) >= ctx:
            out.append(t[:ctx])
else:  # SAELens concat_and_batch_sequences, begin_batch = separator = B
    batch = None
    for t in docs:
        off = 0
        while off < len(t):
            if batch is None:
                pre = [B] if bos and t[off] != B else []
                need = ctx - len(pre)
                batch = pre + t[off:off + need]
            else:
                pre = [B] if t[0] != B else []
                need = max(ctx - len(batch) - len(pre), 0)
                batch = batch + pre[:ctx - len(batch)] + t[off:off + need]
            off += need
            if len(batch) == ctx:
                out.append(batch)
                batch = None
np.save("expected.npy", np.array(out, dtype=np.float32).reshape(-1, ctx))
P
ALL="ids0.txt ids1.txt ids2.txt ids3.txt ids4.txt ids5.txt"

cat > p.yaml <<Y
name: texttest
nodes:
  src: {op: text, params: {path: docs, tokenizer: $TOK, context: 8}}
  sink: {op: npy_sink, inputs: {x: src}, params: {file: w.npy}}
Y
# windows NAME [--set ...]: runs the pipeline, keeps the windows as NAME.npy
windows() {
    name=$1; shift
    expect_ok $DMICA run p.yaml --out o "$@"
    cp o/w.npy "$name.npy"
}
# same A.npy B.npy: identical arrays
same() { python3 -c "
import sys, numpy as np
a, b = np.load('$1'), np.load('$2')
if a.shape != b.shape or not (a == b).all():
    sys.exit('$1 %s != $2 %s' % (a.shape, b.shape))" || fail "$1 differs from $2"; }

# ---- text files, truncate and pack, bos on and off
windows trunc
python3 windows.py truncate 8 1 $ALL; same trunc.npy expected.npy
windows pack --set src.mode=pack
python3 windows.py pack 8 1 $ALL; same pack.npy expected.npy
windows pack_nobos --set src.mode=pack --set src.bos=false
python3 windows.py pack 8 0 $ALL; same pack_nobos.npy expected.npy
windows trunc5 --set src.context=5
python3 windows.py truncate 5 1 $ALL; same trunc5.npy expected.npy
python3 -c "
import numpy as np
w = np.load('trunc.npy'); assert w.shape[1] == 8 and len(w) == 5, w.shape   # the short doc is dropped
assert (w[:, 0] == 50256).all()
assert np.load('pack.npy').shape[0] > 10" || fail "window shapes"

# ---- the same documents as .jsonl, compressed three ways, and in archives
python3 - <<'P'
import json
lines = [json.dumps({"id": i, "text": open(f"docs/d{i}.txt", "rb").read().decode("utf-8", "replace")}) for i in range(6)]
open("c.jsonl", "w").write("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
P
# the invalid bytes are U+FFFD in JSON (JSON is UTF-8); the tokenizer does the same
cp c.jsonl c2.jsonl && gzip -k c2.jsonl && zstd -q c.jsonl -o c3.jsonl.zst && xz -k c.jsonl -c > c4.jsonl.xz
for f in c.jsonl c2.jsonl.gz c3.jsonl.zst c4.jsonl.xz; do
    windows j --set src.path=$f --set src.mode=pack
    same j.npy pack.npy
done
windows j --set src.path=c.jsonl
same j.npy trunc.npy
(cd docs && tar cf ../c.tar d0.txt d1.txt d2.txt d3.txt d4.txt d5.txt)
windows j --set src.path=c.tar --set src.mode=pack; same j.npy pack.npy
# OpenWebText's layout: a .tar.xz of .xz files, each an xz-compressed tar of .txt documents
mkdir owt && (cd docs && tar cf - d0.txt d1.txt d2.txt | xz > ../owt/urlsid_0.xz && tar cf - d3.txt d4.txt d5.txt | xz > ../owt/urlsid_1.xz)
tar cJf owt.tar.xz owt/urlsid_0.xz owt/urlsid_1.xz
windows j --set src.path=owt.tar.xz --set src.mode=pack; same j.npy pack.npy
windows j --set src.path=owt --set src.mode=pack; same j.npy pack.npy
# single compressed documents in a folder, with a glob picking them
mkdir gz && for i in 0 1 2 3 4 5; do gzip -c docs/d$i.txt > gz/d$i.txt.gz; done; echo "not me" > gz/notes.md
windows j --set src.path=gz --set src.glob='*.gz' --set src.mode=pack; same j.npy pack.npy

# ---- token files: nanoGPT .bin (uint16, eot after each document) and 1-D .npy,
# with the documents that do not contain the eot id themselves
python3 - <<'P'
import numpy as np
ids = []
for i in (0, 1, 2, 3, 4):
    ids += [int(x) for x in open(f"ids{i}.txt").read().split()] + [50256]
np.array(ids, dtype=np.uint16).tofile("tok.bin")
np.save("tok.npy", np.array(ids, dtype=np.int64))
P
TOKS="ids0.txt ids1.txt ids2.txt ids3.txt ids4.txt"
for m in truncate pack; do
    python3 windows.py $m 8 1 $TOKS; cp expected.npy exp_$m.npy
    windows b --set src.path=tok.bin --set src.mode=$m --set src.tokenizer=; same b.npy exp_$m.npy
    windows b --set src.path=tok.npy --set src.mode=$m --set src.tokenizer=; same b.npy exp_$m.npy
done
# 2-D .npy: windows as they are
python3 -c "import numpy as np; np.save('win.npy', np.arange(60, dtype=np.int32).reshape(6, 10))"
windows b --set src.path=win.npy --set src.context=10
python3 -c "
import numpy as np
assert (np.load('b.npy') == np.arange(60).reshape(6, 10)).all()" || fail "2-D npy windows"
expect_fail $DMICA run p.yaml --set src.path=win.npy
err_has "set context: 10"

# ---- a document over 1 MiB is tokenized in pieces in pack mode: the same ids
python3 -c "
import random
random.seed(7)
w = 'alpha beta gamma delta, epsilon! zeta? eta theta 1234 iota kappa'.split()
lines = [' '.join(random.choice(w) for _ in range(random.randint(0, 14))) for _ in range(60000)]
open('big.txt', 'w').write('\\n'.join(lines) + '  \\n\\n')"
$DMICA tokenize --tokenizer "$TOK" big.txt > idsbig.txt || fail "tokenize big.txt"
windows big --set src.path=big.txt --set src.mode=pack --set src.context=64
python3 windows.py pack 64 1 idsbig.txt; same big.npy expected.npy

# ---- a tokenizer.json of Gemma's structure: B is its <bos> (2), and a long
# document is tokenized whole (its pieces are single BPE words, no cut is safe)
GTOK=$ROOT/tests/golden/tokenizer_json/gemma
for i in 0 1 2 3 4 5; do
    $DMICA tokenize --tokenizer "$GTOK" docs/d$i.txt > gids$i.txt || fail "tokenize d$i (gemma)"
done
GALL="gids0.txt gids1.txt gids2.txt gids3.txt gids4.txt gids5.txt"
windows gp --set src.tokenizer=$GTOK --set src.mode=pack
B=2 python3 windows.py pack 8 1 $GALL; same gp.npy expected.npy
windows gt --set src.tokenizer=$GTOK
B=2 python3 windows.py truncate 8 1 $GALL; same gt.npy expected.npy
$DMICA tokenize --tokenizer "$GTOK" big.txt > gidsbig.txt || fail "tokenize big.txt (gemma)"
windows gbig --set src.tokenizer=$GTOK --set src.path=big.txt --set src.mode=pack --set src.context=64
B=2 python3 windows.py pack 64 1 gidsbig.txt; same gbig.npy expected.npy

# ---- max_tokens keeps whole windows from the start
windows m --set src.mode=pack --set src.max_tokens=20
python3 -c "
import numpy as np
a, p = np.load('m.npy'), np.load('pack.npy')
assert a.shape == (2, 8) and (a == p[:2]).all(), a.shape" || fail "max_tokens"

# ---- shards: window round robin partitions the stream exactly (max_tokens
# included); document round robin partitions the documents
for s in 0 1 2; do windows sh$s --set src.mode=pack --set src.shards=3 --set src.shard=$s --set src.max_tokens=80; done
for s in 0 1; do windows sd$s --set src.shards=2 --set src.shard=$s --set src.shard_by=document; done
python3 -c "
import numpy as np
p = np.load('pack.npy')[:10]
sh = [np.load(f'sh{s}.npy') for s in range(3)]
for s in range(3):
    assert (sh[s] == p[s::3]).all(), s
t = np.load('trunc.npy')
sd = np.concatenate([np.load('sd0.npy'), np.load('sd1.npy')])
assert sorted(map(tuple, sd)) == sorted(map(tuple, t)), 'document shards'
assert len(np.load('sd0.npy')) == 2   # documents 0, 2, 4; 4 is too short" || fail "shards"

# ---- deterministic: a fresh cache gives the same bytes
expect_ok $DMICA run p.yaml --set src.mode=pack --cache c2 --out o2
cmp o2/w.npy pack.npy 2>/dev/null || same o2/w.npy pack.npy

# ---- the cache key follows the files of the folder
expect_ok $DMICA plan p.yaml
if grep -q "src .*stale" out.txt; then cat out.txt; fail "src stale before any change"; fi
echo " more words appended to change the document content" >> docs/d1.txt
expect_ok $DMICA plan p.yaml
out_has "the content of input file 'path' changed"

# ---- errors
mkdir empty && : > empty/a.txt && : > empty/b.txt
expect_fail $DMICA run p.yaml --set src.path=empty
err_has "no documents"
expect_fail $DMICA run p.yaml --set src.path=docs/d4.txt
err_has "no tokens"
expect_fail $DMICA run p.yaml --set src.path=docs --set src.glob='*.nothing'
err_has "no files match"
head -c 150 c2.jsonl.gz > bad.jsonl.gz
expect_fail $DMICA run p.yaml --set src.path=bad.jsonl.gz
err_has "bad.jsonl.gz"
head -c 300 owt.tar.xz > bad.tar.xz
expect_fail $DMICA run p.yaml --set src.path=bad.tar.xz
err_has "bad.tar.xz"
# OpenWebText's layout with one member cut short: the message names the archive and the member
mkdir owtbad && cp owt/urlsid_0.xz owtbad/ && head -c 60 owt/urlsid_1.xz > owtbad/urlsid_1.xz
tar cJf owtbad.tar.xz owtbad/urlsid_0.xz owtbad/urlsid_1.xz
expect_fail $DMICA run p.yaml --set src.path=owtbad.tar.xz --out bad
err_has "owtbad.tar.xz: owtbad/urlsid_1.xz: unreadable"
[ ! -e bad ] || fail "a failed run left its --out folder"
# an archive by name or by magic that libarchive cannot read is an error naming it, never
# read as raw text (random tokens and exit 0 before)
python3 -c "
import random
r = random.Random(11)
open('garbage.tar', 'wb').write(bytes(r.randrange(256) for _ in range(5000)))
open('garbage.gz', 'wb').write(b'\\x1f\\x8b' + bytes(r.randrange(256) for _ in range(5000)))
open('garbage.zip', 'wb').write(bytes(r.randrange(256) for _ in range(5000)))
"
for f in garbage.tar garbage.gz garbage.zip; do
    expect_fail $DMICA run p.yaml --set src.path=$f --out bad
    err_has "$f: not a readable archive or compressed file"
    [ ! -e bad ] || fail "a failed run on $f left its --out folder"
done
cp garbage.gz renamed.txt # gzip magic, a plain name
expect_fail $DMICA run p.yaml --set src.path=renamed.txt --out bad
err_has "renamed.txt: not a readable archive or compressed file"
mkdir inner && cp garbage.gz inner/x.gz && (cd inner && tar cf ../nested.tar x.gz)
expect_fail $DMICA run p.yaml --set src.path=nested.tar --out bad
err_has "nested.tar: x.gz: not a readable archive or compressed file"
printf '{"text": "fine line with enough words to fill a window of tokens"}\n{"text": oops}\n' > badline.jsonl
expect_fail $DMICA run p.yaml --set src.path=badline.jsonl
err_has "badline.jsonl:2: not a JSON line"
printf '{"body": "x"}\n' > nofield.jsonl
expect_fail $DMICA run p.yaml --set src.path=nofield.jsonl
err_has "nofield.jsonl:1: no string field 'text'"
expect_fail $DMICA run p.yaml --set src.tokenizer=
err_has "set parameter 'tokenizer'"
expect_fail $DMICA run p.yaml --set src.mode=slice
err_has "mode must be truncate or pack"
cache_consistent
echo ok
