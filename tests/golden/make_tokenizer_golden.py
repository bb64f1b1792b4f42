#!/usr/bin/env python3
"""make_tokenizer_golden.py: GPT-2 token ids from Hugging Face `tokenizers`, for
tests/test_tokenizer.c.

The reference is tokenizers' BPE model loaded from the real vocab.json and
merges.txt, with the ByteLevel pre-tokenizer (add_prefix_space=False, GPT-2's
regex), the ByteLevel decoder and `<|endoftext|>` added as a special token:
what GPT2TokenizerFast does. Text reaches it as Python str; a corpus file's bytes
become str by bytes.decode("utf-8", "replace"), the usual way invalid UTF-8
gets in (one U+FFFD per maximal invalid subsequence).

Writes, into tests/golden/tokenizer/ (next to this script), for each file
NAME in tests/golden/tokenizer_corpus/:
  NAME.ids        the ids, decimal, separated by single spaces, then a newline
                  (what `dmica tokenize` prints)
  NAME.repaired   only for files that are not valid UTF-8: the UTF-8 bytes of
                  the decoded str, which decode(encode(bytes)) must give back

Before writing it checks the reference against known GPT-2 ids, and, where the
`regex` module is installed, against GPT-2's own encoder.py algorithm.

  --exhaustive DMICA   instead compares `DMICA tokenize` with the reference on
                       every Unicode scalar value, each in several contexts,
                       and lists the code points where they differ (slow:
                       about a minute; writes nothing into the tree)

Requires `pip install tokenizers` (0.2x). Run from anywhere:
    python3 tests/golden/make_tokenizer_golden.py [--tokenizer DIR]
DIR defaults to tests/data/gpt2-tokenizer (GPT-2's vocab.json and merges.txt).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "tokenizer_corpus")
OUT = os.path.join(HERE, "tokenizer")
EOT = 50256


def reference(tokenizer_dir):
    bpe = models.BPE.from_file(os.path.join(tokenizer_dir, "vocab.json"),
                               os.path.join(tokenizer_dir, "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def check_known(tok):
    """Ids that GPT-2's tokenizer is known to give."""
    known = {
        "Hello world": [15496, 995],
        " Hello world": [18435, 995],
        "<|endoftext|>": [EOT],
        " <|endoftext|>": [220, EOT],
        "a<|endoftext|>b": [64, EOT, 65],
        "I'm": [40, 1101],
        "": [],
    }
    for text, ids in known.items():
        got = encode(tok, text)
        if got != ids:
            sys.exit(f"reference disagrees with GPT-2 on {text!r}: {got} != {ids}")


def gpt2_encoder_py(tokenizer_dir):
    """GPT-2's encoder.py (openai/gpt-2, src/encoder.py), with <|endoftext|>
    split out first; None when the `regex` module is missing."""
    try:
        import regex
    except ImportError:
        return None
    with open(os.path.join(tokenizer_dir, "vocab.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(tokenizer_dir, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:-1]]
    ranks = dict(zip(merges, range(len(merges))))
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_encoder = dict(zip(bs, map(chr, cs)))
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def bpe(token):
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    def enc(text):
        ids = []
        for k, piece in enumerate(text.split("<|endoftext|>")):
            if k:
                ids.append(EOT)
            for t in regex.findall(pat, piece):
                t = "".join(byte_encoder[b] for b in t.encode("utf-8"))
                ids.extend(encoder[s] for s in bpe(t))
        return ids

    return enc


def corpus_files():
    return sorted(f for f in os.listdir(CORPUS) if os.path.isfile(os.path.join(CORPUS, f)))


def write_golden(tok, tokenizer_dir):
    check_known(tok)
    gpt2 = gpt2_encoder_py(tokenizer_dir)
    os.makedirs(OUT, exist_ok=True)
    for name in corpus_files():
        with open(os.path.join(CORPUS, name), "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8", "replace")
        ids = encode(tok, text)
        if tok.decode(ids, skip_special_tokens=False) != text:
            sys.exit(f"{name}: the reference does not decode its own ids back to the text")
        if gpt2 is not None:
            theirs = gpt2(text)
            if theirs != ids:
                at = next((i for i, (a, b) in enumerate(zip(ids, theirs)) if a != b),
                          min(len(ids), len(theirs)))
                print(f"note: {name}: GPT-2's encoder.py (regex module) differs from "
                      f"tokenizers at id {at}", file=sys.stderr)
        with open(os.path.join(OUT, name + ".ids"), "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        repaired = os.path.join(OUT, name + ".repaired")
        if text.encode("utf-8") != raw:
            with open(repaired, "wb") as f:
                f.write(text.encode("utf-8"))
        elif os.path.exists(repaired):
            os.remove(repaired)
        print(f"{name}: {len(raw)} bytes, {len(ids)} ids")


def exhaustive(tok, tokenizer_dir, dmica):
    """Every scalar value c in the contexts below, one probe per c, joined by
    <|endoftext|> so that each is tokenized on its own."""
    contexts = "a_ 1_ !_ __x_'s_  _\t_\n_"
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    probes = [contexts.replace("_", chr(c)) for c in cps]
    expected = [e.ids for e in tok.encode_batch(probes, add_special_tokens=False)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("<|endoftext|>".join(probes))
        out = subprocess.run([dmica, "tokenize", "--tokenizer", tokenizer_dir, path],
                             check=True, capture_output=True, text=True).stdout
    got, cur = [], []
    for t in map(int, out.split()):
        if t == EOT:
            got.append(cur)
            cur = []
        else:
            cur.append(t)
    got.append(cur)
    if len(got) != len(expected):
        sys.exit(f"dmica gave {len(got)} probes, expected {len(expected)}")
    bad = [c for c, a, b in zip(cps, expected, got) if a != b]
    for c in bad[:50]:
        print(f"U+{c:04X} differs")
    print(f"{len(cps)} code points, {len(bad)} differ")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default=os.path.join(REPO, "tests", "data", "gpt2-tokenizer"))
    ap.add_argument("--exhaustive", metavar="DMICA")
    args = ap.parse_args()
    tok = reference(args.tokenizer)
    if args.exhaustive:
        sys.exit(exhaustive(tok, args.tokenizer, args.exhaustive))
    write_golden(tok, args.tokenizer)


if __name__ == "__main__":
    main()
