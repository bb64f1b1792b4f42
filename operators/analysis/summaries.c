/*
 * summaries.c: packing and checked reading of the typed summaries
 * (summaries.h).
 */
#include "summaries.h"

#include <stdlib.h>
#include <string.h>

static const char *kind_name(uint32_t kind)
{
    switch (kind) {
    case DM_SUMMARY_SAE: return "sae summary";
    case DM_SUMMARY_ICA: return "ica summary";
    case DM_SUMMARY_COMPARE: return "ica_compare summary";
    case DM_SUMMARY_EXAMPLES: return "examples summary";
    default: return "unknown summary";
    }
}

void dm_summary_pack(dm_tensor *t, dm_summary_kind kind, uint32_t version, const void *body, uint64_t body_bytes,
                     const void *extra, uint64_t extra_bytes)
{
    dm_summary_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, DM_SUMMARY_MAGIC, sizeof h.magic);
    h.kind = (uint32_t)kind;
    h.version = version;
    h.body_bytes = body_bytes;
    h.extra_bytes = extra_bytes;
    int64_t n = (int64_t)(sizeof h + body_bytes + extra_bytes);
    dm_tensor_init(t, DM_U8, 1, &n);
    uint8_t *p = t->data;
    memcpy(p, &h, sizeof h);
    memcpy(p + sizeof h, body, body_bytes);
    if (extra_bytes)
        memcpy(p + sizeof h + body_bytes, extra, extra_bytes);
}

int dm_summary_read(const dm_tensor *t, const char *name, dm_summary_kind kind, uint32_t version, void *body,
                    uint64_t body_bytes, const uint8_t **extra, uint64_t *extra_bytes)
{
    if (!t)
        return dm_failc(DM_E_INTERNAL, "%s: no tensor", name);
    if (t->dtype != DM_U8 || t->ndim != 1)
        return dm_failc(DM_E_SHAPE, "%s: a %s is a 1-D u8 tensor, not a %d-D %s tensor", name, kind_name(kind),
                        t->ndim, dm_dtype_name(t->dtype));
    uint64_t n = (uint64_t)dm_tensor_numel(t);
    dm_summary_header h;
    if (n < sizeof h)
        return dm_failc(DM_E_CORRUPT, "%s: %llu bytes, shorter than a summary's header: not a %s", name,
                        (unsigned long long)n, kind_name(kind));
    memcpy(&h, t->data, sizeof h);
    if (memcmp(h.magic, DM_SUMMARY_MAGIC, sizeof h.magic))
        return dm_failc(DM_E_CORRUPT, "%s: not a typed summary (no '%s' header); expected the %s", name,
                        DM_SUMMARY_MAGIC, kind_name(kind));
    if (h.kind != (uint32_t)kind)
        return dm_failc(DM_E_CORRUPT, "%s: holds a %s, expected a %s", name, kind_name(h.kind), kind_name(kind));
    if (h.version != version)
        return dm_failc(DM_E_CORRUPT, "%s: %s layout version %u, this dmica reads version %u", name,
                        kind_name(kind), h.version, version);
    if (h.body_bytes != body_bytes)
        return dm_failc(DM_E_CORRUPT, "%s: %s body of %llu bytes, expected %llu", name, kind_name(kind),
                        (unsigned long long)h.body_bytes, (unsigned long long)body_bytes);
    if (h.extra_bytes > n || n - sizeof h - body_bytes != h.extra_bytes || n < sizeof h + body_bytes)
        return dm_failc(DM_E_CORRUPT, "%s: %s of %llu bytes, its header says %llu", name, kind_name(kind),
                        (unsigned long long)n,
                        (unsigned long long)(sizeof h + h.body_bytes + h.extra_bytes));
    const uint8_t *p = t->data;
    memcpy(body, p + sizeof h, body_bytes);
    if (extra)
        *extra = p + sizeof h + body_bytes;
    if (extra_bytes)
        *extra_bytes = h.extra_bytes;
    return 0;
}

int dm_sae_summary_read(const dm_tensor *t, const char *name, dm_sae_summary *s, const char **doc, size_t *len)
{
    const uint8_t *x;
    uint64_t nx;
    if (dm_summary_read(t, name, DM_SUMMARY_SAE, DM_SUMMARY_SAE_VERSION, s, sizeof *s, &x, &nx))
        return -1;
    *doc = (const char *)x, *len = (size_t)nx;
    return 0;
}

int dm_ica_summary_read(const dm_tensor *t, const char *name, dm_ica_summary *s, const char **doc, size_t *len)
{
    const uint8_t *x;
    uint64_t nx;
    if (dm_summary_read(t, name, DM_SUMMARY_ICA, DM_SUMMARY_ICA_VERSION, s, sizeof *s, &x, &nx))
        return -1;
    *doc = (const char *)x, *len = (size_t)nx;
    return 0;
}

int dm_compare_summary_read(const dm_tensor *t, const char *name, dm_compare_summary *s)
{
    uint64_t nx;
    if (dm_summary_read(t, name, DM_SUMMARY_COMPARE, DM_SUMMARY_COMPARE_VERSION, s, sizeof *s, NULL, &nx))
        return -1;
    if (nx)
        return dm_failc(DM_E_CORRUPT, "%s: ica_compare summary with %llu bytes after its body, expected none", name,
                        (unsigned long long)nx);
    return 0;
}

/* 0 <= off, 0 <= len, off + len <= size, without overflow. */
static int in_range(int64_t off, int64_t len, int64_t size)
{
    return off >= 0 && len >= 0 && off <= size && len <= size - off;
}

int dm_examples_summary_read(const dm_tensor *t, const char *name, dm_examples_view *v)
{
    const uint8_t *x;
    uint64_t nx;
    memset(v, 0, sizeof *v);
    if (dm_summary_read(t, name, DM_SUMMARY_EXAMPLES, DM_SUMMARY_EXAMPLES_VERSION, &v->s, sizeof v->s, &x, &nx))
        return -1;
    const dm_examples_summary *s = &v->s;
    const int64_t big = INT64_C(1) << 40;
    if (!in_range(0, s->columns, big) || !in_range(0, s->total_bins, big) || !in_range(0, s->total_examples, big) ||
        !in_range(0, s->text_bytes, big))
        return dm_failc(DM_E_CORRUPT, "%s: examples summary with negative or absurd counts", name);
    uint64_t want = (uint64_t)s->columns * sizeof(dm_examples_column) + (uint64_t)s->total_bins * sizeof(int64_t) +
                    (uint64_t)s->total_examples * sizeof(dm_example) + (uint64_t)s->text_bytes;
    if (want != nx)
        return dm_failc(DM_E_CORRUPT, "%s: examples summary arrays of %llu bytes, its counts say %llu", name,
                        (unsigned long long)nx, (unsigned long long)want);
    /* a copy: the tensor's bytes need not be aligned for the structs */
    v->owned = dm_xmalloc((size_t)nx + 1);
    memcpy(v->owned, x, (size_t)nx);
    v->columns = (const dm_examples_column *)v->owned;
    v->counts = (const int64_t *)(v->columns + s->columns);
    v->examples = (const dm_example *)(v->counts + s->total_bins);
    v->text = (const char *)(v->examples + s->total_examples);
    for (int64_t j = 0; j < s->columns; j++) {
        const dm_examples_column *c = &v->columns[j];
        if (!in_range(c->first_bin, c->bins, s->total_bins) || !in_range(0, c->ntop, big) ||
            !in_range(0, c->nbottom, big) || !in_range(c->first_example, c->ntop + c->nbottom, s->total_examples)) {
            dm_examples_view_free(v);
            return dm_failc(DM_E_CORRUPT, "%s: column %lld of the examples summary points outside its arrays",
                            name, (long long)j);
        }
    }
    for (int64_t e = 0; e < s->total_examples; e++) {
        const dm_example *x2 = &v->examples[e];
        if (!in_range(x2->left, x2->left_len, s->text_bytes) || !in_range(x2->token, x2->token_len, s->text_bytes) ||
            !in_range(x2->right, x2->right_len, s->text_bytes)) {
            dm_examples_view_free(v);
            return dm_failc(DM_E_CORRUPT, "%s: example %lld of the examples summary points outside its text", name,
                            (long long)e);
        }
    }
    return 0;
}

void dm_examples_view_free(dm_examples_view *v)
{
    free(v->owned);
    memset(v, 0, sizeof *v);
}

/* ---- building examples ---- */

#define GROW(p, cap, need)                                                                                             \
    do {                                                                                                               \
        if ((need) > (cap)) {                                                                                          \
            (cap) = (need) > 2 * (cap) ? (need) : 2 * (cap);                                                           \
            (p) = dm_xrealloc((p), (size_t)(cap) * sizeof *(p));                                                      \
        }                                                                                                              \
    } while (0)

void dm_examples_begin(dm_examples_builder *b, int64_t k, int has_text)
{
    memset(b, 0, sizeof *b);
    b->s.k = k;
    b->s.has_text = has_text != 0;
}

void dm_examples_column_add(dm_examples_builder *b, double lo, double hi, const int64_t *counts, int64_t bins)
{
    GROW(b->columns, b->cap_columns, b->s.columns + 1);
    GROW(b->counts, b->cap_counts, b->s.total_bins + bins);
    dm_examples_column *c = &b->columns[b->s.columns++];
    memset(c, 0, sizeof *c);
    c->lo = lo, c->hi = hi;
    c->first_bin = b->s.total_bins, c->bins = bins;
    c->first_example = b->s.total_examples;
    memcpy(b->counts + b->s.total_bins, counts, (size_t)bins * sizeof *counts);
    b->s.total_bins += bins;
}

static int64_t add_text(dm_examples_builder *b, const char *s, size_t len)
{
    int64_t off = b->s.text_bytes;
    if (s && len) {
        GROW(b->text, b->cap_text, off + (int64_t)len);
        memcpy(b->text + off, s, len);
        b->s.text_bytes += (int64_t)len;
    }
    return off;
}

void dm_examples_add(dm_examples_builder *b, int top, double value, int64_t row, const char *left, size_t left_len,
                     const char *token, size_t token_len, const char *right, size_t right_len)
{
    GROW(b->examples, b->cap_examples, b->s.total_examples + 1);
    dm_examples_column *c = &b->columns[b->s.columns - 1];
    dm_example *e = &b->examples[b->s.total_examples++];
    memset(e, 0, sizeof *e);
    e->value = value, e->row = row;
    if (b->s.has_text) {
        e->left = add_text(b, left, left_len), e->left_len = (int64_t)left_len;
        e->token = add_text(b, token, token_len), e->token_len = (int64_t)token_len;
        e->right = add_text(b, right, right_len), e->right_len = (int64_t)right_len;
    }
    if (top)
        c->ntop++;
    else
        c->nbottom++;
}

void dm_examples_end(dm_examples_builder *b, dm_tensor *t)
{
    size_t nc = (size_t)b->s.columns * sizeof(dm_examples_column), nb = (size_t)b->s.total_bins * sizeof(int64_t),
           ne = (size_t)b->s.total_examples * sizeof(dm_example), nt = (size_t)b->s.text_bytes;
    uint8_t *extra = dm_xmalloc(nc + nb + ne + nt + 1);
    if (nc)
        memcpy(extra, b->columns, nc);
    if (nb)
        memcpy(extra + nc, b->counts, nb);
    if (ne)
        memcpy(extra + nc + nb, b->examples, ne);
    if (nt)
        memcpy(extra + nc + nb + ne, b->text, nt);
    dm_summary_pack(t, DM_SUMMARY_EXAMPLES, DM_SUMMARY_EXAMPLES_VERSION, &b->s, sizeof b->s, extra, nc + nb + ne + nt);
    free(extra);
    free(b->columns), free(b->counts), free(b->examples), free(b->text);
    memset(b, 0, sizeof *b);
}
