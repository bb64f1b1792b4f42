#!/usr/bin/env python3
"""Reads `dmica export` output back as the consuming tools would, and checks it
against the run folder it came from (docs/exports.md). Plain Python: no numpy,
no tokenizers library. The values are checked against RUN_DIR/NAME_sources.npy,
or where the run keeps none against the context values its topk node kept.

    check_exports.py RUN_DIR --jsonl FILE [--neuronpedia DIR] [--prompts DIR]
                     [--vocab VOCAB.json]

--vocab: a GPT-2 byte-level vocab.json; every token string must then equal the
token's bytes decoded alone with errors="replace" (what tokenizers' ByteLevel
decoder and TransformerLens's to_str_tokens give). Without it (a run without
token windows) tokens must be the "<row N>" placeholders.

Exit status 0 when everything holds; an AssertionError naming the field
otherwise.
"""
import argparse
import ast
import functools
import gzip
import json
import math
import os
import re
import struct
import sys

# ---- the run ------------------------------------------------------------------


def load_npy(path):
    """(shape, dtype char, raw bytes of the data) of a little-endian .npy."""
    with open(path, "rb") as f:
        b = f.read()
    assert b[:6] == b"\x93NUMPY", path
    major = b[6]
    hl = struct.unpack("<H", b[8:10])[0] if major == 1 else struct.unpack("<I", b[8:12])[0]
    off = 10 if major == 1 else 12
    hdr = ast.literal_eval(b[off:off + hl].decode("latin1"))
    assert not hdr["fortran_order"], path
    return hdr["shape"], hdr["descr"], b[off + hl:]


class Sources:
    def __init__(self, path):
        shape, descr, self.data = load_npy(path)
        assert descr == "<f4" and len(shape) == 2, (path, descr, shape)
        self.rows, self.K = shape

    def bits(self, row, col):
        o = 4 * (row * self.K + col)
        return self.data[o:o + 4]

    def value(self, row, col):
        return struct.unpack("<f", self.bits(row, col))[0]


class KeptValues:
    """A run that keeps no NAME_sources.npy (the 100M-token pipeline): the
    values topk kept over each example's context (context_values), by row.
    Two examples' contexts that share a row must agree there."""

    def __init__(self, top_path):
        comps = json.load(open(top_path))["components"]
        self.K, self.v = len(comps), {}
        for j, c in enumerate(comps):
            for kind in ("top", "bottom", "random"):
                for e in c.get(kind, []):
                    if "context_values" not in e:
                        self.v[(e["row"], j)] = e["value"]
                        continue
                    first = e["row"] - e["position"] + e["context_start"]
                    for t, x in enumerate(e["context_values"]):
                        assert x is not None, (top_path, j, kind, "a context value was not kept")
                        old = self.v.setdefault((first + t, j), x)
                        assert f32_bits(old) == f32_bits(x), (top_path, j, first + t, old, x)

    def bits(self, row, col):
        return f32_bits(self.v[(row, col)])

    def value(self, row, col):
        return self.v[(row, col)]


@functools.lru_cache(maxsize=None)
def sources(run, name):
    """NAME's values: NAME_sources.npy, else its topk's kept context values."""
    p = os.path.join(run, name + "_sources.npy")
    if os.path.exists(p):
        return Sources(p)
    return KeptValues(os.path.join(run, name + "_top_examples.json"))


@functools.lru_cache(maxsize=None)
def top_examples(run, name):
    """RUN_DIR/NAME_top_examples.json, read once (callers do not change it)."""
    return json.load(open(os.path.join(run, name + "_top_examples.json")))


def f32_bits(x):
    return struct.pack("<f", x)


def same_f32(exported, row, col, src):
    """The exported number is the float32 at (row, col) exactly."""
    v = src.value(row, col)
    if not math.isfinite(v):
        return exported is None or exported == 0
    return exported is not None and f32_bits(exported) == src.bits(row, col)


def byte_decoder():
    """GPT-2's bytes_to_unicode, inverted (OpenAI gpt-2 src/encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Vocab:
    def __init__(self, path):
        dec = byte_decoder()
        vocab = json.load(open(path, encoding="utf-8"))
        self.text = {i: bytes(dec[ch] for ch in t).decode("utf-8", "replace") for t, i in vocab.items()}


def decompositions(run):
    names = sorted(f[:-len("_top_examples.json")] for f in os.listdir(run)
                   if re.fullmatch(r"[A-Za-z0-9]+_top_examples\.json", f))
    assert names, "no decomposition in " + run
    return names


def results_stats(run, name):
    p = os.path.join(run, "results.json")
    if not os.path.exists(p):
        return None
    r = json.load(open(p))
    s = r.get(name + "_components", r.get("components") if name == "ica" else None)
    return s


# ---- an example, whatever the format ----------------------------------------


def check_window(ex, comp, src, vocab, ids, strs, values, anchor, mx, mx_index, where):
    """values over the window equal the sources; the maximum and its index;
    token strings; the anchor's row and value as topk recorded them."""
    assert len(strs) == len(values) and len(values) >= 1, where
    assert ids is None or len(ids) == len(values), where
    row = ex["row"]
    first = row - anchor
    for t, v in enumerate(values):
        assert same_f32(v, first + t, comp, src), (where, t, v, src.value(first + t, comp))
    assert f32_bits(values[anchor]) == f32_bits(ex["value"]), where
    finite = [v for v in values if v is not None]
    assert mx == max(finite), (where, mx, max(finite))
    assert mx_index == values.index(mx), (where, mx_index)
    if "context_ids" in ex:
        assert anchor == ex["position"] - ex["context_start"], where
        if ids is not None:
            assert ids == ex["context_ids"], where
        for t, s in enumerate(strs):
            want = vocab.text[ex["context_ids"][t]] if vocab else None
            assert vocab is None or s == want, (where, t, s, want)
    else:
        assert strs == ["<row %d>" % row], (where, strs)
        assert ids is None or ids == [-1], where


def is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---- jsonl: delphi's fields ---------------------------------------------------

EXAMPLE_FIELDS = {"tokens": list, "str_tokens": list, "activations": list, "max_activation": float,
                  "max_index": int, "index": int, "value": float, "row": int}


def check_jsonl(run, path, vocab):
    lines = [json.loads(l) for l in open(path, encoding="utf-8")]
    names = decompositions(run)
    seen = {}
    for line in lines:
        for k, t in [("decomposition", str), ("component", int), ("latent", dict), ("stats", dict),
                     ("top", list), ("bottom", list), ("random", list)]:
            assert isinstance(line.get(k), t), ("jsonl", k, line.get(k))
        name, j = line["decomposition"], line["component"]
        seen.setdefault(name, []).append(j)
        lat = line["latent"]
        assert isinstance(lat["module_name"], str) and lat["latent_index"] == j
        assert lat["module_name"].endswith(name)
        top = top_examples(run, name)
        src = sources(run, name)
        comp = top["components"][j]
        stats = results_stats(run, name)
        if stats:
            for k, v in stats[j].items():
                if k != "component" and is_num(v):
                    assert abs(line["stats"][k] - v) <= 1e-8 * max(1, abs(v)), (name, j, k)
        for kind in ("top", "bottom", "random"):
            want = comp.get(kind, [])
            got = line[kind]
            assert len(got) == len(want), (name, j, kind, len(got), len(want))
            for i, (e, ex) in enumerate(zip(got, want)):
                where = "%s %d %s %d" % (name, j, kind, i)
                for k, t in EXAMPLE_FIELDS.items():
                    assert isinstance(e.get(k), t) or (t is float and is_num(e.get(k))), (where, k, e.get(k))
                assert e["row"] == ex["row"], where
                assert all(isinstance(x, int) for x in e["tokens"]), where
                assert all(isinstance(x, str) for x in e["str_tokens"]), where
                # what delphi builds from it: ActivatingExample(tokens, activations, str_tokens)
                assert len(e["tokens"]) == len(e["activations"]) == len(e["str_tokens"]), where
                check_window(ex, j, src, vocab, e["tokens"], e["str_tokens"], e["activations"], e["index"],
                             e["max_activation"], e["max_index"], where)
                assert e["window"] == ex.get("window") and e["start"] == ex.get("context_start"), where
        vals = [e["value"] for e in line["top"]]
        assert vals == sorted(vals, reverse=True), (name, j, "top not in descending order")
        rows = [e["row"] for e in line["random"]]
        assert rows == sorted(set(rows)), (name, j, "random rows not distinct and sorted")
        assert line["random"], (name, j, "no random sample")
    for name in names:
        K = sources(run, name).K
        assert sorted(seen.get(name, [])) == list(range(K)), (name, "components missing from the jsonl")
    assert sorted(seen) == names, (sorted(seen), names)
    return sum(len(v) for v in seen.values())


# ---- neuronpedia: the fields of neuronpedia-utils' db_models ------------------
# (neuronpedia/utils/neuronpedia-utils/neuronpedia_utils/db_models/*.py: the
# records are built as Model(**record), so every key must be a field and every
# field without a default must be there)
NP = {
    "activation": ({"id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
                    "values", "creatorId"},
                   {"dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "createdAt",
                    "lossValues", "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex"}),
    "feature": ({"modelId", "layer", "index"},
                {"creatorId", "createdAt", "maxActApprox", "hasVector", "vector", "vectorLabel",
                 "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues",
                 "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                 "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
                 "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1", "neg_str",
                 "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
                 "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                 "decoder_weights_dist"}),
    "source.jsonl": ({"id", "modelId", "setName", "creatorId"},
                     {"hasDashboards", "inferenceEnabled", "inferenceHosts", "saelensConfig", "saelensRelease",
                      "saelensSaeId", "hfRepoId", "hfFolderId", "visibility", "defaultOfModelId", "hasUmap",
                      "hasUmapLogSparsity", "hasUmapClusters", "num_prompts", "num_tokens_in_prompt", "dataset",
                      "notes", "createdAt"}),
    "sourceset.jsonl": ({"modelId", "name", "creatorId"},
                        {"hasDashboards", "visibility", "description", "type", "creatorName", "urls", "creatorEmail",
                         "releaseName", "defaultOfModelId", "defaultRange", "defaultShowBreaks", "showDfa",
                         "showCorrelated", "showHeadAttribution", "showUmap", "createdAt"}),
    "release.jsonl": ({"name", "description", "creatorName", "creatorId"},
                      {"visibility", "isNewUi", "featured", "descriptionShort", "urls", "creatorEmail",
                       "creatorNameShort", "defaultSourceSetName", "defaultSourceId", "defaultUmapSourceIds",
                       "createdAt"}),
    "model.jsonl": ({"id", "instruct", "creatorId"},
                    {"displayNameShort", "displayName", "tlensId", "dimension", "visibility", "defaultSourceSetName",
                     "defaultSourceId", "inferenceEnabled", "layers", "neuronsPerLayer", "createdAt", "owner",
                     "updatedAt", "website"}),
}


def check_record(kind, rec, where):
    required, optional = NP[kind]
    keys = set(rec)
    assert required <= keys, (where, "missing", required - keys)
    assert keys <= required | optional, (where, "not a field of Neuronpedia's " + kind, keys - required - optional)


def read_jsonl_gz(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(l) for l in f]


def check_neuronpedia(run, out, vocab):
    names = decompositions(run)
    dirs = sorted(os.listdir(out))
    assert len(dirs) == len(names), (dirs, names)
    n = 0
    for name in names:
        d = [x for x in dirs if x.endswith("-" + name)]
        assert len(d) == 1, (name, dirs)
        source, d = d[0], os.path.join(out, d[0])
        for f in ("source.jsonl", "sourceset.jsonl", "release.jsonl", "model.jsonl"):
            recs = [json.loads(l) for l in open(os.path.join(d, f))]
            assert len(recs) == 1, f
            check_record(f, recs[0], f)
        model = json.loads(open(os.path.join(d, "model.jsonl")).readline())["id"]
        top = top_examples(run, name)
        src = sources(run, name)
        feats = read_jsonl_gz(os.path.join(d, "features", "batch-0.jsonl.gz"))
        acts = read_jsonl_gz(os.path.join(d, "activations", "batch-0.jsonl.gz"))
        assert [f["index"] for f in feats] == [str(j) for j in range(src.K)], name
        ids = set()
        by_feature = {}
        for a in acts:
            check_record("activation", a, "activation " + a.get("id", "?"))
            assert a["id"] not in ids, ("duplicate id", a["id"])
            ids.add(a["id"])
            assert a["layer"] == source and a["modelId"] == model, a["id"]
            for k in ("tokens", "values"):
                assert isinstance(a[k], list), (a["id"], k)
            assert all(isinstance(t, str) for t in a["tokens"]) and all(is_num(v) for v in a["values"]), a["id"]
            # what Neuronpedia's converter computes from tokens and values
            assert a["maxValue"] == max(a["values"]), a["id"]
            assert a["maxValueTokenIndex"] == a["values"].index(max(a["values"])), a["id"]
            assert a["minValue"] == min(a["values"]), a["id"]
            by_feature.setdefault(int(a["index"]), []).append(a)
        for j, f in enumerate(feats):
            check_record("feature", f, "feature %s %d" % (name, j))
            assert f["layer"] == source and f["modelId"] == model
            comp = top["components"][j]
            kinds = [(kind, i, ex) for kind in ("top", "bottom", "random") for i, ex in enumerate(comp.get(kind, []))]
            got = by_feature.get(j, [])
            assert len(got) == len(kinds), (name, j, len(got), len(kinds))
            for a, (kind, i, ex) in zip(got, kinds):
                where = a["id"]
                assert a["dataSource"] == kind and a["dataIndex"] == str(ex["row"]), where
                check_window(ex, j, src, vocab, None, a["tokens"], a["values"], a["qualifyingTokenIndex"],
                             a["maxValue"], a["maxValueTokenIndex"], where)
            tops = [a for a in got if a["dataSource"] == "top"]
            assert f["maxActApprox"] == max(a["maxValue"] for a in tops), (name, j)
            assert f["freq_hist_data_bar_heights"] == comp["histogram"]["counts"], (name, j)
            assert len(f["freq_hist_data_bar_values"]) == len(comp["histogram"]["counts"])
            dirs_path = os.path.join(run, name + "_directions.npy")
            if os.path.exists(dirs_path):
                shape, descr, raw = load_npy(dirs_path)
                fmt = {"<f4": "f", "<f8": "d"}[descr]
                size = struct.calcsize(fmt)
                row = [struct.unpack("<" + fmt, raw[size * (j * shape[1] + c):size * (j * shape[1] + c + 1)])[0]
                       for c in range(shape[1])]
                assert f["hasVector"] and len(f["vector"]) == shape[1], (name, j)
                assert all(abs(a - b) <= 1e-8 * max(1, abs(b)) for a, b in zip(f["vector"], row)), (name, j)
            n += 1
    return n


def check_prompts(run, pdir):
    n = 0
    for name in decompositions(run):
        top = top_examples(run, name)
        for j, comp in enumerate(top["components"]):
            p = os.path.join(pdir, "%s_%d.txt" % (name, j))
            text = open(p, encoding="utf-8").read()
            examples = re.findall(r"^Example \d+: (.*)$", text, re.M)
            assert len(examples) == len(comp["top"]) + len(comp["bottom"]), (p, len(examples))
            # delphi's convention: an example whose maximum is positive marks it
            assert "<<" in examples[0] and ">>" in examples[0], p
            n += 1
    assert len(os.listdir(pdir)) == n, (pdir, "files beyond one per component")
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--jsonl")
    ap.add_argument("--neuronpedia")
    ap.add_argument("--prompts")
    ap.add_argument("--vocab")
    a = ap.parse_args()
    vocab = Vocab(a.vocab) if a.vocab else None
    if a.jsonl:
        print("jsonl: %d components ok" % check_jsonl(a.run, a.jsonl, vocab))
    if a.neuronpedia:
        print("neuronpedia: %d features ok" % check_neuronpedia(a.run, a.neuronpedia, vocab))
    if a.prompts:
        print("prompts: %d files ok" % check_prompts(a.run, a.prompts))


if __name__ == "__main__":
    sys.exit(main())
