#!/usr/bin/env python3
"""make_tokenizer_json_golden.py: tokenizer.json files and their token ids from
Hugging Face `tokenizers`, for tests/test_tokenizer.c.

Gemma's real tokenizer cannot be downloaded here, so this script builds small
tokenizer.json files of the same structure with the library, trained on the
text in tests/, and records the library's ids for many texts. Each variant
covers parts of the format that dmica loads (operators/kernels/tokenizer_json.c):

  gemma         Gemma's structure as transformers' GemmaConverter writes it
                (convert_slow_tokenizer.py, 4.44): BPE with byte_fallback,
                <0x00>..<0xFF> in the vocabulary with "\\t" for <0x09>, unk
                <unk> fused, the merges generate_merges() derives from the
                vocabulary ordered by piece score (so several merges make one
                token, as in Gemma's file), normalizer Replace(" ", "▁"),
                pre-tokenizer Split(" ", MergedWithPrevious), the added tokens
                <pad> <eos> <bos> <unk> <mask> ... <start_of_turn> <end_of_turn>
                (normalized false), TemplateProcessing "<bos> $A", decoder
                Replace + ByteFallback + Fuse
  gemma_nopre   the same with pre_tokenizer null (older Gemma files; the
                texts of EXTRA only)
  llama         BPE trained by the library (each merge makes its own token),
                normalizer Sequence[Prepend("▁"), Replace(" ", "▁")],
                byte_fallback, added tokens with lstrip, rstrip, single_word and
                normalized set, one added token outside the model vocabulary,
                TemplateProcessing "<s> $A"
  metaspace     Sequence[Strip(right), Replace(Regex(" {2,}"), "▁")] normalizer,
                Metaspace(prepend_scheme "first"), no byte fallback, unk not fused
                (a small alphabet, so many characters are unknown)
  splits        ByteLevel BPE behind Split pre-tokenizers of every behaviour
                (Removed, Contiguous, MergedWithNext, MergedWithPrevious,
                Isolated, inverted), ByteLevel(add_prefix_space=True),
                ignore_merges, merges written as [a, b] pairs (tokenizers 0.20's
                spelling; 0.19 reads only "a b", so the ids come from that form)
  gpt2          GPT-2's tokenizer (tests/data/gpt2-tokenizer) in tokenizer.json
                form, as GPT2TokenizerFast saves it; 1.4 MB, so it is committed
                compressed (zstd -19: gpt2/tokenizer.json.zst, ~450 KB), and its
                ids are the existing tests/golden/tokenizer/*.ids (checked here
                to be what the library gives from the tokenizer.json too)

Writes into tests/golden/tokenizer_json/ (next to this script):
  cases.json           the texts: {"name": hex of the bytes}; a file's bytes
                       reach the library as bytes.decode("utf-8", "replace")
  NAME/tokenizer.json  (gpt2/tokenizer.json.zst)
  NAME/expected.json   {"bos": id or -1, "vocab_size": n,
                        "ids": {case: ids without special tokens},
                        "ids_special": {case: ids of encode(add_special_tokens=True)}}
The texts are every file of tests/golden/tokenizer_corpus/ and the strings in
EXTRA below. Training is not deterministic (the library breaks ties between
equally frequent pairs in hash order), so a rerun writes other tokenizers, with
the ids that go with them. Requires tokenizers 0.19, transformers
(generate_merges) and the zstd command:
    /work/venv/bin/python tests/golden/make_tokenizer_json_golden.py
"""
import glob
import json
import os
import subprocess
import sys

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)
from transformers.convert_slow_tokenizer import generate_merges

# Its letters and digits of Unicode 15 and 16 are classified by the Unicode
# tables of the library's version (tokenizers 0.19 predates them); dmica follows
# the newer ones, which tests/golden/tokenizer/ holds for GPT-2. So variants
# whose pre-tokenizer has \p{L}, \p{N} or \d classes skip it.
UNICODE_NEW = "file:unicode_classes.txt"
# Long: checked with the gemma variant only.
LONG = "file:long_words.txt"

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "tokenizer_json")
CORPUS = os.path.join(HERE, "tokenizer_corpus")
GPT2_IDS = os.path.join(HERE, "tokenizer")

EXTRA = {
    "empty": "",
    "hello": "Hello world",
    "hello_space": " Hello world",
    "edges": "  leading and trailing  ",
    "tabs": "a\tb\t\tc",
    "spaces": "          ",
    "newlines": "\n\n\n",
    "crlf": "line\r\nline\r\n",
    "mixed_ws": "a    b \u00a0 c\u3000d",
    "numbers": "1234567890 3.14159 -42,000",
    "code": "def f(x):\n    return x + 1  # done\n\n\tif x:--y\n",
    "unknown": "日本語 😀🎉 Ωmega ﬁ",
    "controls": "\u0000\u0001\u007f x",
    "accents": "é e\u0301 naïve",
    "long_word": "supercalifragilistic" * 20,
    "long_run": "a" * 300 + "b",
    "long_punct": "=" * 200,
    "metaspace_literal": "▁x ▁▁y▁",
    "bos_eos": "<bos>hello<eos>",
    "turns": "<start_of_turn>user\nhi there<end_of_turn>\n<start_of_turn>model\n",
    "pads": "<pad><pad> <pad>",
    "partial_special": "<bos <<bos>> <bo s> bos>",
    "unused": "<unused0> <unused1>x<unused2>",
    "mass": "[@BOS@]<2mass>",
    "s_tokens": "<s>a</s> <s> b </s>",
    "mask_lstrip": "x   [MASK] y [MASK][MASK]",
    "rstrip": "<x>   y <x>z<x>",
    "single_word": "hello world ahello hellob hello_ hello, (hello)",
    "normalized_added": "wörld wörlds  wörld",
    "outside_vocab": "a<newtok>b <newtok>",
    "endoftext": "a<|endoftext|>b <|endoftext|>",
    "begin": "<|begin|>x",
    "splits": "one--two,three 1234 5,6--7 x,,y -- ,",
}

GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<2mass>", "[@BOS@]"]
GEMMA_USER = ["<unused0>", "<unused1>", "<unused2>"]
GEMMA_TURNS = ["<start_of_turn>", "<end_of_turn>"]


def training_text():
    texts = []
    for path in sorted(glob.glob(os.path.join(REPO, "tests", "data", "tiny-corpus", "*"))):
        with open(path, "rb") as f:
            texts.append(f.read().decode("utf-8", "replace"))
    for path in sorted(glob.glob(os.path.join(CORPUS, "*"))):
        if os.path.basename(path) != "long_words.txt":
            with open(path, "rb") as f:
                texts.append(f.read().decode("utf-8", "replace"))
    return texts


def cases():
    out = {}
    for path in sorted(glob.glob(os.path.join(CORPUS, "*"))):
        with open(path, "rb") as f:
            out["file:" + os.path.basename(path)] = f.read()
    for name, text in EXTRA.items():
        out[name] = text.encode("utf-8")
    out["invalid_utf8"] = b"ok \xff\xfe bad \xe2\x82 cut \xc3"
    return out


def train_pieces(texts, vocab_size, limit_alphabet, normalizer, pre):
    """The pieces a BPE trained by the library learns, in merge order."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=limit_alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    vocab = tok.get_vocab()
    return sorted(vocab, key=vocab.get), json.loads(tok.to_str())["model"]["merges"]


def gemma(pieces, pre):
    """GemmaConverter's output for a SentencePiece model whose pieces are the
    trained ones (scores falling with the merge order)."""
    vocab_scores = [(t, 0.0) for t in GEMMA_SPECIAL + GEMMA_USER + GEMMA_TURNS]
    bytes_ = ["\t" if b == 9 else f"<0x{b:02X}>" for b in range(256)]
    vocab_scores += [(t, 0.0) for t in bytes_]
    seen = {t for t, _ in vocab_scores}
    score = 0.0
    for p in pieces:
        if p not in seen:
            seen.add(p)
            score -= 1.0
            vocab_scores.append((p, score))
    vocab = {t: i for i, (t, _) in enumerate(vocab_scores)}
    merges = generate_merges(vocab, vocab_scores)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True, dropout=None))
    specials = set(GEMMA_SPECIAL + GEMMA_TURNS)
    for t in GEMMA_SPECIAL + GEMMA_USER + GEMMA_TURNS:
        added = AddedToken(t, normalized=False, special=t in specials)
        if t in specials:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
    tok.normalizer = normalizers.Replace(" ", "▁")
    if pre:
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1",
        special_tokens=[("<bos>", vocab["<bos>"])])
    return tok


def llama(texts):
    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    pieces, merges = train_pieces(texts, 700, 90, norm, pre_tokenizers.Split("▁", "merged_with_next"))
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)])}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    for extra in ["[MASK]", "<x>", "▁hello", "hello", "w", "ö", "r", "l", "d", "wö", "wör", "wörl",
                  "wörld"]:
        vocab.setdefault(extra, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    merges += [("w", "ö"), ("wö", "r"), ("wör", "l"), ("wörl", "d")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = norm
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ["<unk>", "<s>", "</s>"]])
    tok.add_tokens([AddedToken("[MASK]", lstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("<x>", rstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("hello", single_word=True, normalized=False)])
    tok.add_tokens([AddedToken("wörld", normalized=True)])
    tok.add_tokens([AddedToken("<newtok>", normalized=False)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    return tok


def metaspace(texts):
    norm = normalizers.Sequence([normalizers.Strip(left=False, right=True),
                                 normalizers.Replace(Regex(" {2,}"), "▁")])
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=False))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=500, limit_alphabet=60, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(texts, trainer)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def splits(texts):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split("--", "removed"),
        pre_tokenizers.Split(Regex(r"\d"), "contiguous"),
        pre_tokenizers.Split(",", "merged_with_next"),
        pre_tokenizers.Split(Regex(r"[aeiou]"), "merged_with_previous", invert=True),
        pre_tokenizers.Split(Regex(r"x*"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    ])
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin|>"])
    tok.train_from_iterator(texts, trainer)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin|> $A",
                                      special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))]),
    ])
    return tok


def gpt2():
    d = os.path.join(REPO, "tests", "data", "gpt2-tokenizer")
    tok = Tokenizer(models.BPE.from_file(os.path.join(d, "vocab.json"),
                                         os.path.join(d, "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok


def pairs_merges(text):
    """The same file with merges as [a, b] pairs (tokenizers 0.20's spelling)."""
    j = json.loads(text)
    j["model"]["merges"] = [m.split(" ") for m in j["model"]["merges"]]
    return json.dumps(j, ensure_ascii=False, separators=(",", ":"))


def bos_of(tok):
    e = tok.encode("x", add_special_tokens=True).ids
    x = tok.encode("x", add_special_tokens=False).ids
    if e == x:
        return -1
    if e[1:] != x:
        sys.exit("the post-processor does more than put one id first")
    return e[0]


def write_variant(name, text, all_cases, compress=False, rewrite=None, skip=()):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    tok = Tokenizer.from_file(path)  # the ids of the file as written
    bos = bos_of(tok)
    ids, ids_special = {}, {}
    for case, raw in all_cases.items():
        if case in skip or (case.startswith("file:") and "file:*" in skip):
            continue
        s = raw.decode("utf-8", "replace")
        a = tok.encode(s, add_special_tokens=False).ids
        b = tok.encode(s, add_special_tokens=True).ids
        if b != ([bos] if bos >= 0 else []) + a:
            sys.exit(f"{name}: {case}: add_special_tokens does more than put the BOS first")
        ids[case] = a
        if not case.startswith("file:"):
            ids_special[case] = b
    if name == "gpt2":
        # the committed goldens of the vocab.json/merges.txt loader are the reference
        for case in list(ids):
            if case.startswith("file:"):
                with open(os.path.join(GPT2_IDS, case[5:] + ".ids")) as f:
                    want = [int(t) for t in f.read().split()]
                if want != ids[case] and case != UNICODE_NEW:
                    sys.exit(f"gpt2: {case}: tokenizer.json gives other ids than vocab.json")
                del ids[case]
    exp = {"bos": bos, "vocab_size": tok.get_vocab_size(with_added_tokens=True),
           "ids": ids, "ids_special": ids_special}
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(exp, f, separators=(",", ":"))
        f.write("\n")
    if rewrite:
        # tokenizers 0.19 reads only "a b" merges; the ids are the file's either way
        with open(path, "w", encoding="utf-8") as f:
            f.write(rewrite(text))
    if compress:
        subprocess.run(["zstd", "-19", "-q", "-f", "--rm", path, "-o", path + ".zst"], check=True)
    n = sum(len(v) for v in ids.values())
    print(f"{name}: vocabulary {tok.get_vocab_size(with_added_tokens=True)}, bos {bos}, "
          f"{len(ids)} texts, {n} ids")


def main():
    texts = training_text()
    all_cases = cases()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({k: v.hex() for k, v in all_cases.items()}, f, indent=0, sort_keys=True)
        f.write("\n")
    pieces, _ = train_pieces(texts, 900, 120, normalizers.Replace(" ", "▁"),
                             pre_tokenizers.Split("▁", "merged_with_next"))
    write_variant("gemma", gemma(pieces, True).to_str(), all_cases)
    write_variant("gemma_nopre", gemma(pieces, False).to_str(), all_cases, skip=("file:*",))
    write_variant("llama", llama(texts).to_str(), all_cases, skip=(LONG,))
    write_variant("metaspace", metaspace(texts).to_str(), all_cases, skip=(LONG,))
    write_variant("splits", splits(texts).to_str(), all_cases, rewrite=pairs_merges,
                  skip=(LONG, UNICODE_NEW))
    write_variant("gpt2", gpt2().to_str(), all_cases, compress=True)


if __name__ == "__main__":
    main()
