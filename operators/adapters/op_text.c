/*
 * op_text.c: the `text` source: a corpus on disk in, windows of GPT-2 token ids
 * out, one row per window, `context` columns of int32 ids.
 *
 * Documents come from io/corpus.c (txt, jsonl, compressed and archived files,
 * nanoGPT .bin and 1-D integer .npy token files) in a fixed order: the files
 * sorted by name, then archive order, then line order. Text is tokenized with
 * operators/kernels/tokenizer.c (BPE exact to Hugging Face tokenizers: GPT-2's
 * vocab.json and merges.txt, or a tokenizer.json such as Gemma's). Windows
 * follow SAELens (sae_lens/tokenization_and_batching.py,
 * concat_and_batch_sequences), B being the tokenizer's BOS, also the document
 * separator (`<|endoftext|>`, 50256, for GPT-2; `<bos>` for Gemma; 50256
 * without a tokenizer):
 *
 *   truncate  one window per document: B + its first context-1 tokens (bos on;
 *             a document that already starts with B keeps it, without a second
 *             one). A document too short for a full window is dropped, as
 *             SAELens does with disable_concat_sequences: a stream needs a fixed
 *             width, and padding would put pad tokens into every statistic.
 *             (The plan's tokens[:, :context_len] padded short documents.)
 *   pack      documents concatenated, B between two documents (unless the next
 *             one starts with B), cut into full windows that each start with B
 *             (unless their first token already is B); the last partial window
 *             is dropped. This is SAELens's activation store with prepend_bos.
 * With bos false, truncate windows are a document's first `context` tokens and
 * pack windows start with no B (documents are still separated by one).
 *
 * Token files are documents already: a .bin / 1-D .npy splits into documents
 * at each B (nanoGPT's prepare.py ends each document with one). A 2-D integer
 * .npy [N, T] is windows already: its rows are used as they are (T must equal
 * `context`; bos and mode do not apply).
 *
 * max_tokens keeps the first floor(max_tokens / context) windows. Shards
 * (shard r of n, for several processes over one corpus) are deterministic:
 *   shard_by window     every process reads and tokenizes the whole corpus and
 *                       keeps windows i with i mod n = r: the n shards together
 *                       are exactly the unsharded stream (max_tokens included)
 *   shard_by document   process r reads only documents d with d mod n = r and
 *                       windows them on its own (pack mode then packs its own
 *                       documents): no process tokenizes what it does not use;
 *                       max_tokens is split, r getting its share of the windows
 * Row indices of a shard's stream are local to the shard (0, 1, ...).
 *
 * Cache keys: `path` is a DM_P_PATH, so the engine hashes the file's content,
 * or for a folder the content of every file in it (not subfolders, which are
 * not read either). A glob is given apart, in `glob`, as names within the
 * folder `path`: every file it can match is one the folder hash covers, so the
 * key changes whenever a matching file does (and, harmlessly, when a file that
 * does not match changes too).
 */
#include <stdlib.h>
#include <string.h>

#include "corpus.h"
#include "npy.h"
#include "op.h"
#include "sae_desc.h"
#include "tokenizer.h"

#define GPT2_EOT 50256
#define PIECE_BYTES (1 << 20) /* pack mode tokenizes long documents in pieces of about this */
#define MAX_CONTEXT 65536

static const dm_param_spec text_params[] = {
    {"path", DM_P_PATH, NULL, "a corpus file, or a folder of them (read one level deep)"},
    {"glob", DM_P_STRING, "", "with a folder path: only files whose names match (e.g. \"*.jsonl.zst\")"},
    {"tokenizer", DM_P_PATH, "", "folder with vocab.json and merges.txt, or with tokenizer.json (needed for text "
                                 "inputs)"},
    {"format", DM_P_STRING, "auto", "auto (by file name), txt, jsonl, bin or npy"},
    {"text_field", DM_P_STRING, "text", "the field of each .jsonl line that holds the document"},
    {"context", DM_P_INT, "0", "tokens per window, BOS included (0: the context_size of the SAE on input sae, else 128)"},
    {"mode", DM_P_STRING, "truncate", "truncate (first tokens of each document) or pack (concatenate)"},
    {"max_tokens", DM_P_INT, "0", "stop after floor(max_tokens/context) windows (0 = the whole corpus)"},
    {"bos", DM_P_STRING, "auto", "start every window with the tokenizer's BOS (<|endoftext|> for GPT-2, <bos> "
                                 "for Gemma): true, false, or auto (the "
                                 "prepend_bos of the SAE on input sae; true without one, as SAELens and "
                                 "TransformerLens do)"},
    {"shard", DM_P_INT, "0", "which shard to produce (0-based)"},
    {"shards", DM_P_INT, "1", "how many shards the windows are split into"},
    {"shard_by", DM_P_STRING, "window", "window (round robin over windows) or document (over documents)"},
    {NULL},
};
/* the SAE whose context_size and prepend_bos are the defaults (sae_config, planted_sae) */
enum { IN_SAE };
static const dm_port_spec text_inputs[] = {{"sae", DM_PORT_TENSOR, .optional = 1}, {NULL}};
static const dm_port_spec text_outputs[] = {{"windows", DM_PORT_STREAM, .dtype = DM_I32}, {NULL}};

typedef struct {
    int ctx, pack, bos, by_doc;
    int64_t shard, shards, limit; /* limit: windows to make (-1 none), counted in `made` */
    int32_t bos_id;
    const char *path;
    char **files;
    int nfiles;

    dm_corpus *corpus;
    dm_tokenizer *tok;
    dm_token_ids ids;

    /* 2-D .npy windows */
    int npy_windows, npy_file;
    dm_npy_map *npy;
    int64_t npy_row;

    /* a long text document being tokenized piece by piece (pack mode) */
    const char *text;
    size_t text_len, text_pos;
    int text_first;
    char *text_where;

    int32_t *cur; /* the window being packed */
    int cur_n;
    int32_t *queue; /* complete windows, ctx each */
    int64_t qn, qh, qcap;

    int64_t made, emitted, docs, dropped, tokens;
    int done;
} text_state;

/* ---- parameters -------------------------------------------------------- */

/* The settings of the SAE on input `sae` (sae_desc.h), -1 each where it says
 * nothing or the input is not connected. */
static int sae_settings(const dm_node *n, int64_t *context, int *bos)
{
    const dm_sae_desc *d;
    *context = -1;
    *bos = -1;
    if (dm_sae_desc_input(n, IN_SAE, &d))
        return -1;
    if (d)
        *context = d->context_size, *bos = d->prepend_bos;
    return 0;
}

/* context and bos: as given, else as the SAE was trained (its cfg.json, on
 * input sae), else 128 and BOS (the research plan's windows, docs/analysis.md). An explicit value that contradicts
 * the SAE's is kept, and said when `say`. */
static int64_t text_context(const dm_node *n, int say)
{
    int64_t ctx = dm_param_int(n, "context"), sae_ctx;
    int sae_bos;
    if (sae_settings(n, &sae_ctx, &sae_bos))
        return -1;
    if (ctx == 0)
        ctx = sae_ctx > 0 ? sae_ctx : 128;
    if (say && dm_param_int(n, "context") == 0)
        dm_info("node '%s': windows of %lld tokens (%s)", dm_node_name(n), (long long)ctx,
                sae_ctx > 0 ? "the SAE's context_size" : "the default");
    else if (say && sae_ctx > 0 && sae_ctx != ctx)
        dm_warn("node '%s': context %lld overrides the SAE's cfg.json (context_size %lld)", dm_node_name(n),
                (long long)ctx, (long long)sae_ctx);
    return ctx;
}

static int text_bos(const dm_node *n, int say)
{
    const char *v = dm_param_str(n, "bos");
    int64_t sae_ctx;
    int sae_bos, bos;
    if (sae_settings(n, &sae_ctx, &sae_bos))
        return -1;
    if (!strcmp(v, "auto"))
        bos = sae_bos != 0;
    else if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1"))
        bos = 1;
    else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0"))
        bos = 0;
    else
        return dm_failc(DM_E_INPUT, "bos must be auto, true or false, not '%s'", v);
    if (say && strcmp(v, "auto") && sae_bos >= 0 && sae_bos != bos)
        dm_warn("node '%s': bos: %s overrides the SAE's cfg.json (prepend_bos: %s)", dm_node_name(n),
                bos ? "true" : "false", sae_bos ? "true" : "false");
    return bos;
}

static int parse_params(const dm_node *n, int *pack, int *by_doc, dm_corpus_format *fmt)
{
    const char *mode = dm_param_str(n, "mode"), *by = dm_param_str(n, "shard_by");
    int64_t ctx = text_context(n, 0), r = dm_param_int(n, "shard"), s = dm_param_int(n, "shards");
    int bos = text_bos(n, 0);
    if (ctx < 0 || bos < 0)
        return -1;
    if (strcmp(mode, "truncate") && strcmp(mode, "pack"))
        return dm_fail("mode must be truncate or pack, not '%s'", mode);
    if (strcmp(by, "window") && strcmp(by, "document"))
        return dm_fail("shard_by must be window or document, not '%s'", by);
    if (ctx < 1 + bos || ctx > MAX_CONTEXT)
        return dm_fail("context must be between %d and %d tokens, not %lld", 1 + bos,
                       MAX_CONTEXT, (long long)ctx);
    if (dm_param_int(n, "max_tokens") < 0)
        return dm_fail("max_tokens must be 0 (no limit) or positive, not %lld",
                       (long long)dm_param_int(n, "max_tokens"));
    if (s < 1 || r < 0 || r >= s)
        return dm_fail("shard %lld of %lld: need 0 <= shard < shards", (long long)r, (long long)s);
    *pack = !strcmp(mode, "pack");
    *by_doc = !strcmp(by, "document");
    return dm_corpus_format_parse(dm_param_str(n, "format"), fmt);
}

/* 1 if the files are 2-D .npy windows (all of them; *T gets their width), 0 if
 * none is, -1 with dm_fail() for a mixture or mismatched widths. */
static int npy_windows(char **files, int nfiles, dm_corpus_format fmt, int64_t *T)
{
    int n2 = 0;
    *T = 0;
    for (int i = 0; i < nfiles; i++) {
        size_t l = strlen(files[i]);
        if (dm_corpus_file_format(files[i], fmt) != DM_CORPUS_NPY || l < 4 || strcmp(files[i] + l - 4, ".npy"))
            continue;
        dm_npy_map *m = dm_npy_open(files[i]);
        if (!m)
            return -1;
        const dm_npy_header *h = dm_npy_hdr(m);
        int two = h->ndim == 2;
        int64_t t = h->shape[1];
        dm_npy_close(m);
        if (!two)
            continue;
        if (n2 && t != *T)
            return dm_fail("%s: windows of %lld tokens, but %s has windows of %lld", files[i], (long long)t,
                           files[0], (long long)*T);
        *T = t;
        n2++;
    }
    if (n2 && n2 != nfiles)
        return dm_fail("%s: 2-D .npy token windows cannot be mixed with other inputs (%d of %d files are)",
                       files[0], n2, nfiles);
    return n2 > 0;
}

static int text_infer(dm_node *n)
{
    int pack, by_doc, rc;
    dm_corpus_format fmt;
    char **files;
    int nfiles;
    if (parse_params(n, &pack, &by_doc, &fmt))
        return -1;
    int64_t T, ctx = text_context(n, 0);
    if (dm_corpus_list(dm_param_str(n, "path"), dm_param_str(n, "glob"), &files, &nfiles))
        return -1;
    rc = npy_windows(files, nfiles, fmt, &T);
    if (rc > 0 && T != ctx)
        rc = dm_fail("%s: 2-D token array of windows of %lld tokens, used as they are, but context is %lld: "
                     "set context: %lld", files[0], (long long)T, (long long)ctx, (long long)T);
    else if (rc == 0 && !*dm_param_str(n, "tokenizer"))
        for (int i = 0; i < nfiles; i++)
            if (dm_corpus_needs_tokenizer(files[i], fmt)) {
                rc = dm_fail("%s holds text: set parameter 'tokenizer' to a folder with vocab.json and "
                             "merges.txt, or with tokenizer.json (a Hugging Face model folder has them)",
                             files[i]);
                break;
            }
    dm_corpus_list_free(files, nfiles);
    if (rc < 0)
        return -1;
    dm_port_desc *o = dm_output_desc(n, 0);
    o->shape[0] = -1;
    o->shape[1] = ctx;
    o->max_rows = dm_param_int(n, "max_tokens") / ctx; /* windows at most (text_open's limit) */
    return 0;
}

/* The tokenizer (vocabulary, merges, word cache) and the pack buffers. */
static int64_t text_state_bytes(const dm_node *n)
{
    int64_t ctx = text_context(n, 0);
    int64_t tok = *dm_param_str(n, "tokenizer") ? (int64_t)64 << 20 : 0;
    return tok + 8 * (int64_t)DM_CORPUS_PIECE + 2 * 4 * (int64_t)PIECE_BYTES + 4 * ctx * 1024;
}

/* ---- windows ----------------------------------------------------------- */

static void queue_push(text_state *s, const int32_t *w)
{
    if (s->qh == s->qn)
        s->qh = s->qn = 0;
    if (s->qn == s->qcap) {
        s->qcap = s->qcap ? 2 * s->qcap : 64;
        s->queue = dm_xrealloc(s->queue, (size_t)(s->qcap * s->ctx) * sizeof(int32_t));
    }
    memcpy(s->queue + s->qn * s->ctx, w, (size_t)s->ctx * sizeof(int32_t));
    s->qn++;
}

/* Truncate mode: one document's first tokens (at least ctx of them if it has
 * them) to at most one window. */
static void truncate_window(text_state *s, const int32_t *t, size_t n)
{
    int ctx = s->ctx;
    if (s->bos && n && t[0] != s->bos_id) {
        if (n >= (size_t)ctx - 1) {
            s->cur[0] = s->bos_id;
            memcpy(s->cur + 1, t, (size_t)(ctx - 1) * sizeof(int32_t));
            queue_push(s, s->cur);
            return;
        }
    } else if (n >= (size_t)ctx) {
        queue_push(s, t);
        return;
    }
    s->dropped++;
}

/* Pack mode: appends ids of a document (start: its first piece) to the stream. */
static void pack_add(text_state *s, const int32_t *t, size_t n, int start)
{
    size_t off = 0;
    int ctx = s->ctx;
    while (off < n) {
        if (s->cur_n == 0) {
            if (s->bos && t[off] != s->bos_id)
                s->cur[s->cur_n++] = s->bos_id;
        } else if (start && off == 0 && t[0] != s->bos_id) {
            s->cur[s->cur_n++] = s->bos_id; /* the separator between documents */
        }
        size_t take = (size_t)(ctx - s->cur_n) < n - off ? (size_t)(ctx - s->cur_n) : n - off;
        memcpy(s->cur + s->cur_n, t + off, take * sizeof(int32_t));
        s->cur_n += (int)take;
        off += take;
        if (s->cur_n == ctx) {
            queue_push(s, s->cur);
            s->cur_n = 0;
        }
    }
}

static int is_graph(char ch) { return ch > ' ' && ch < 0x7f; }

/* The end of the next piece of a long text: a cut after a single newline
 * between printable ASCII characters ("x\ny") does not change GPT-2's
 * tokenization: no pre-token pattern of GPT-2's regex (tokenizer.c) spans it.
 * Tokenizers where it could (dm_tokenizer_cut_is_safe: Gemma's, whose pieces
 * are BPE words whole) get the document in one piece. */
static size_t text_cut(const char *t, size_t len, size_t pos)
{
    if (len - pos <= PIECE_BYTES)
        return len;
    for (size_t i = pos + PIECE_BYTES; i + 1 < len; i++)
        if (t[i - 1] == '\n' && is_graph(t[i - 2]) && is_graph(t[i]))
            return i;
    return len;
}

static int tokenize_piece(text_state *s)
{
    size_t end = dm_tokenizer_cut_is_safe(s->tok) ? text_cut(s->text, s->text_len, s->text_pos) : s->text_len;
    s->ids.n = 0;
    if (dm_tokenizer_encode_append(s->tok, s->text + s->text_pos, end - s->text_pos, &s->ids))
        return dm_fail_prefix("%s", s->text_where);
    s->tokens += (int64_t)s->ids.n;
    pack_add(s, s->ids.ids, s->ids.n, s->text_first);
    s->text_first = 0;
    s->text_pos = end;
    if (end == s->text_len)
        s->text = NULL;
    return 0;
}

/* The next row of the 2-D .npy windows into the queue: 1, 0 at the end, -1. */
static int npy_next(text_state *s)
{
    while (!s->npy || s->npy_row >= dm_npy_hdr(s->npy)->shape[0]) {
        dm_npy_close(s->npy);
        s->npy = NULL;
        if (s->npy_file >= s->nfiles)
            return 0;
        const char *f = s->files[s->npy_file++];
        if (!(s->npy = dm_npy_open(f)))
            return -1;
        dm_dtype t = dm_npy_hdr(s->npy)->dtype;
        if (t != DM_I32 && t != DM_I64 && t != DM_U16 && t != DM_U8)
            return dm_fail("%s: token ids must be integers (int32, int64, uint16 or uint8), not %s", f,
                           dm_dtype_name(t));
        s->npy_row = 0;
    }
    const dm_npy_header *h = dm_npy_hdr(s->npy);
    const char *d = (const char *)dm_npy_data(s->npy) + (size_t)(s->npy_row * s->ctx) * dm_dtype_size(h->dtype);
    for (int j = 0; j < s->ctx; j++) {
        int64_t v;
        switch (h->dtype) {
        case DM_I32: { int32_t x; memcpy(&x, d + 4 * j, 4); v = x; break; }
        case DM_I64: { int64_t x; memcpy(&x, d + 8 * j, 8); v = x; break; }
        case DM_U16: { uint16_t x; memcpy(&x, d + 2 * j, 2); v = x; break; }
        default: v = (uint8_t)d[j];
        }
        if (v < 0 || v >= (1 << 24))
            return dm_fail("%s: token id %lld at window %lld, position %d is out of range (0 to %d)",
                           s->files[s->npy_file - 1], (long long)v, (long long)s->npy_row, j, (1 << 24) - 1);
        s->cur[j] = (int32_t)v;
    }
    s->npy_row++;
    s->docs++;
    s->tokens += s->ctx;
    queue_push(s, s->cur);
    return 1;
}

/* Reads and tokenizes until a window is queued: 1, or 0 at the corpus's end, -1. */
static int fill(text_state *s)
{
    while (s->qh == s->qn) {
        if (s->npy_windows) {
            int r = npy_next(s);
            if (r <= 0)
                return r;
            continue;
        }
        if (s->text) {
            if (tokenize_piece(s))
                return -1;
            continue;
        }
        dm_doc doc;
        int r = dm_corpus_next(s->corpus, &doc);
        if (r <= 0)
            return r;
        if (s->by_doc && doc.index % s->shards != s->shard) {
            dm_corpus_skip_rest(s->corpus);
            continue;
        }
        if (doc.part == 0)
            s->docs++;
        if (!doc.is_tokens && !s->tok)
            return dm_fail("%s: a text document, but parameter 'tokenizer' is not set", doc.where);
        if (!s->pack) {
            const int32_t *t = doc.ids;
            size_t n = doc.n;
            if (!doc.is_tokens) {
                s->ids.n = 0;
                if (dm_tokenizer_encode_prefix(s->tok, doc.text, doc.len, (size_t)s->ctx, &s->ids))
                    return dm_fail_prefix("%s", doc.where);
                t = s->ids.ids;
                n = s->ids.n;
            } else {
                dm_corpus_skip_rest(s->corpus);
            }
            s->tokens += (int64_t)(n < (size_t)s->ctx ? n : (size_t)s->ctx);
            truncate_window(s, t, n);
        } else if (doc.is_tokens) {
            s->tokens += (int64_t)doc.n;
            pack_add(s, doc.ids, doc.n, doc.part == 0);
        } else {
            s->text = doc.text;
            s->text_len = doc.len;
            s->text_pos = 0;
            s->text_first = 1;
            free(s->text_where);
            s->text_where = dm_xstrdup(doc.where);
        }
    }
    return 1;
}

/* The next window of this shard into w: 1, 0 at the end, -1 on error. */
static int next_window(text_state *s, int32_t *w)
{
    for (;;) {
        if (s->done || (s->limit >= 0 && s->made >= s->limit))
            return 0;
        int r = fill(s);
        if (r <= 0) {
            s->done = 1;
            return r;
        }
        const int32_t *q = s->queue + s->qh * s->ctx;
        s->qh++;
        int64_t g = s->made++;
        if (!s->by_doc && g % s->shards != s->shard)
            continue;
        memcpy(w, q, (size_t)s->ctx * sizeof *w);
        return 1;
    }
}

/* ---- the operator ------------------------------------------------------ */

static void text_close(dm_node *n)
{
    text_state *s = dm_node_state(n);
    if (!s)
        return;
    dm_corpus_close(s->corpus);
    dm_tokenizer_free(s->tok);
    dm_token_ids_release(&s->ids);
    dm_npy_close(s->npy);
    dm_corpus_list_free(s->files, s->nfiles);
    free(s->cur), free(s->queue), free(s->text_where);
    free(s);
    dm_node_set_state(n, NULL);
}

static int text_open(dm_node *n)
{
    text_state *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    dm_corpus_format fmt;
    int64_t T;
    if (parse_params(n, &s->pack, &s->by_doc, &fmt))
        return -1;
    s->ctx = (int)text_context(n, 1);
    s->bos = text_bos(n, 1);
    s->shard = dm_param_int(n, "shard");
    s->shards = dm_param_int(n, "shards");
    s->path = dm_param_str(n, "path");
    s->bos_id = GPT2_EOT;
    int64_t max_tokens = dm_param_int(n, "max_tokens"), w = max_tokens / s->ctx;
    s->limit = !max_tokens ? -1 : s->by_doc ? w * (s->shard + 1) / s->shards - w * s->shard / s->shards : w;
    s->cur = dm_xmalloc((size_t)s->ctx * sizeof *s->cur);
    if (dm_corpus_list(s->path, dm_param_str(n, "glob"), &s->files, &s->nfiles))
        return -1;
    int r = npy_windows(s->files, s->nfiles, fmt, &T);
    if (r < 0)
        return -1;
    s->npy_windows = r;
    if (r) {
        if (T != s->ctx)
            return dm_fail("%s: windows of %lld tokens, but context is %d", s->files[0], (long long)T, s->ctx);
        if (s->by_doc) /* each row is a document and a window: the two rules agree */
            s->by_doc = 0, s->limit = !max_tokens ? -1 : w;
        return 0;
    }
    if (*dm_param_str(n, "tokenizer")) {
        if (!(s->tok = dm_tokenizer_load(dm_param_str(n, "tokenizer"))))
            return -1;
        if (dm_tokenizer_bos(s->tok) >= 0)
            s->bos_id = dm_tokenizer_bos(s->tok);
        else if (s->bos)
            return dm_fail("%s: the tokenizer has no BOS token (no <|endoftext|>, no TemplateProcessing "
                           "post-processor naming one): set bos: false", dm_param_str(n, "tokenizer"));
    }
    s->corpus = dm_corpus_open(s->files, s->nfiles, fmt, dm_param_str(n, "text_field"), s->bos_id);
    return 0;
}

/* Why a shard ended without a single window, in words a user can act on. */
static int empty_error(const text_state *s)
{
    if (!s->docs)
        return dm_fail("%s: no documents (%d file%s read, every one empty)", s->path, s->nfiles,
                       s->nfiles > 1 ? "s" : "");
    if (s->made > 0)
        return dm_fail("%s: shard %lld of %lld got no windows: the corpus makes only %lld", s->path,
                       (long long)s->shard, (long long)s->shards, (long long)s->made);
    if (s->limit == 0)
        return dm_fail("%s: max_tokens is below one window of %d tokens: no tokens", s->path, s->ctx);
    if (!s->pack)
        return dm_fail("%s: no tokens: %lld document%s, none long enough for a window of %d tokens (truncate "
                       "mode drops shorter documents; mode: pack joins them)",
                       s->path, (long long)s->docs, s->docs == 1 ? "" : "s", s->ctx);
    return dm_fail("%s: no tokens: %lld tokens in %lld document%s, fewer than one window of %d", s->path,
                   (long long)s->tokens, (long long)s->docs, s->docs == 1 ? "" : "s", s->ctx);
}

static int text_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    text_state *s = dm_node_state(n);
    int64_t rows = 0;
    while (rows < max_rows) {
        int r = next_window(s, out->i32 + rows * s->ctx);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        rows++;
    }
    out->row0 = s->emitted;
    out->rows = rows;
    out->cols = s->ctx;
    s->emitted += rows;
    if (!rows && !s->emitted)
        return empty_error(s);
    if (!rows && dm_verbose >= 2)
        dm_info("%s: %lld documents, %lld windows of %d tokens (%lld documents too short, dropped)", s->path,
                (long long)s->docs, (long long)s->emitted, s->ctx, (long long)s->dropped);
    return 0;
}

const dm_op dm_op_text = {
    .name = "text",
    .version = 2, /* windows are int32 (were float32): a new spill format */
    .summary = "windows of GPT-2 token ids from text, jsonl, archives, .bin or .npy token files",
    .params = text_params,
    .inputs = text_inputs,
    .outputs = text_outputs,
    .spill_source = 1, /* tokenizing again costs more than a replay */
    .infer = text_infer,
    .state_bytes = text_state_bytes,
    .open = text_open,
    .produce = text_produce,
    .close = text_close,
};
