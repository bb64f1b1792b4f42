/*
 * cmd_export.c: `dmica export RUN_DIR --format jsonl|neuronpedia`, a run's
 * components as the files autointerp pipelines (EleutherAI's delphi) and
 * Neuronpedia's feature uploads read (docs/exports.md gives the mapping field
 * by field, with where each name comes from).
 *
 * Which decompositions: every NAME with RUN_DIR/NAME_top_examples.json (a
 * topk node's product) where NAME is one word of letters and digits: `ica`
 * (FastICA), `rica` (RICA), or any later one that follows the naming, with no
 * change here. ica_activation_top_examples.json ranks the projections of the
 * activations on the directions, not a decomposition's sources, and is left
 * out (its NAME has an underscore).
 *
 * Per component and per example (top, bottom and the random sample that the
 * topk node keeps), the tokens of the example's context window and the
 * component's value at each of them. Rows of token streams are window * T +
 * position (the gpt2 operator's), and topk records each example's row, window
 * position and the window's context start, so the context's rows are the
 * example's row minus its offset in the context, plus 0, 1, ...; their values
 * are read from RUN_DIR/NAME_sources.npy (rows x components, the same rows)
 * when the run kept it, else from the context's values the topk node kept
 * with each example (`context_values`: the 100M-token pipeline keeps no
 * sources). Where both are there they must agree, and each example's own value
 * must equal the one topk recorded, or the two files are not from the same
 * run. Token strings are the run's tokenizer's
 * decoding of each token alone (dm_tokenizer_decode_token). A run without
 * token windows (`dmica demo`: planted data) has no contexts: each example is
 * its one row, with token id -1 and the string "<row N>".
 *
 * Per-component statistics come from RUN_DIR/results.json when it is there:
 * the numbers of its `NAME_components` list (for FastICA, `components`).
 *
 * Nothing is written unless all of it can be: files are made under temporary
 * names and renamed into place at the end (dm_write_file_atomic,
 * dm_dir_publish). No network.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "engine.h"
#include "fs.h"
#include "npy.h"
#include "tokenizer.h"

static const dm_arg_spec export_specs[] = {
    {"format", DM_ARG_STRING, "jsonl|neuronpedia", NULL, 1, 0, 0, 0, "what to write (docs/exports.md)"},
    {"out", DM_ARG_PATH, "PATH", NULL, 0, 0, 0, 0,
     "where (default: RUN_DIR/components.jsonl for jsonl, the folder RUN_DIR/neuronpedia for neuronpedia)"},
    {"prompts", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0,
     "also one prompt file per component for LLM explanation, DIR/NAME_N.txt"},
    {"tokenizer", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0,
     "the tokenizer's folder (default: the topk node's, from RUN_DIR/pipeline.yaml)"},
    {"threshold", DM_ARG_FLOAT, "F", "0.3", 0, 0, 1, 0,
     "prompts: tokens above F x the example's maximum are marked <<so>> (delphi's default)"},
    {"model-id", DM_ARG_STRING, "ID", NULL, 0, 0, 0, 0,
     "neuronpedia: the model's id there, e.g. gpt2-small (default: the run's model folder's name)"},
    {"source-set", DM_ARG_STRING, "NAME", "dmica", 0, 0, 0, 0,
     "neuronpedia: source set; each decomposition is the source LAYER-NAME-DECOMPOSITION"},
    {"creator-id", DM_ARG_STRING, "ID", "dmica", 0, 0, 0, 0, "neuronpedia: the creatorId of every record"},
    {NULL},
};

static const dm_arg_cmd export_cmd = {
    "export", "RUN_DIR --format jsonl|neuronpedia [--out PATH] [--prompts DIR] [options]",
    "Exports every decomposition of a finished run (RUN_DIR/NAME_top_examples.json with\n"
    "NAME_sources.npy: ica, rica, ...): per component its top, bottom and random examples as token\n"
    "strings with the component's value at each token of the context window. jsonl: one line per\n"
    "component in delphi's example fields; neuronpedia: Neuronpedia's export folders (features and\n"
    "activations, .jsonl.gz). docs/exports.md maps every field.\n",
    export_specs, "RUN_DIR", 1, 1,
};

/* ---- the run --------------------------------------------------------------- */

typedef struct {
    char *name;          /* "ica" */
    char *top_path, *src_path;
    json_t *top;         /* NAME_top_examples.json */
    json_t *comps;       /* its "components" */
    dm_npy_map *src;     /* NAME_sources.npy; NULL when the run kept none */
    const float *S;      /* rows x K, or NULL: the values are topk's context_values */
    int64_t rows, K;
    json_t *stats;       /* results.json's list for it, or NULL (borrowed from results) */
    dm_tensor dirs;      /* NAME_directions.npy (K x d) when there; f32 or f64 */
    int have_dirs;
    dm_tokenizer *tok;
} decomp;

typedef struct {
    const char *run;
    json_t *results; /* NULL when the run has none */
    dm_pipeline *pipe; /* NULL when the run has no pipeline.yaml */
    decomp *d;
    int nd;
} run_t;

/* One example, ready for any format. */
typedef struct {
    int64_t n;           /* tokens */
    int32_t *ids;        /* -1: no token (a run without windows) */
    char **str;
    double *val;         /* NAN where the source is not finite */
    int64_t anchor;      /* the example's own token, as an index into the above */
    int64_t row, window, start; /* window and start -1 without windows */
    double value;        /* at the anchor */
    double max, min;
    int64_t max_index;
} example;

static void example_free(example *e)
{
    for (int64_t i = 0; e->str && i < e->n; i++)
        free(e->str[i]);
    free(e->ids), free(e->str), free(e->val);
}

static int name_ok(const char *s, size_t n)
{
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The decompositions' names, sorted: NAME from NAME_top_examples.json. */
static int find_decomps(const char *run, char ***names, int *n)
{
    static const char suffix[] = "_top_examples.json";
    DIR *dir = opendir(run);
    if (!dir)
        return dm_failc(errno == ENOENT ? DM_E_INPUT : DM_E_IO, "%s: cannot read the run folder: %s", run,
                        strerror(errno));
    *names = NULL, *n = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        size_t len = strlen(de->d_name), sl = sizeof suffix - 1;
        if (len > sl && !strcmp(de->d_name + len - sl, suffix) && name_ok(de->d_name, len - sl)) {
            *names = dm_xrealloc(*names, (size_t)(*n + 1) * sizeof **names);
            (*names)[(*n)++] = dm_xasprintf("%.*s", (int)(len - sl), de->d_name);
        }
    }
    closedir(dir);
    if (*n)
        qsort(*names, (size_t)*n, sizeof **names, by_name);
    else
        return dm_failc(DM_E_INPUT, "%s: no NAME_top_examples.json (ica_top_examples.json, written by a topk node): "
                        "not the --out folder of a finished run?", run);
    return 0;
}

static json_t *load_json(const char *path)
{
    json_error_t err;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!j) {
        if (access(path, F_OK))
            dm_failc(DM_E_INPUT, "%s: missing (%s)", path, strerror(errno));
        else
            dm_failc(DM_E_CORRUPT, "%s: line %d: %s", path, err.line, err.text);
    }
    return j;
}

/* The tokenizer folder of the topk node that wrote file, from the run's
 * pipeline.yaml, else the text node's (the one that made the windows); NULL
 * when there is none. */
static const char *pipeline_tokenizer(const run_t *r, const char *file)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; r->pipe && i < r->pipe->nnodes; i++) {
            const dm_node_decl *nd = &r->pipe->nodes[i];
            const char *f = NULL, *t = NULL;
            if (strcmp(nd->op, pass ? "text" : "topk"))
                continue;
            for (int k = 0; k < nd->nparams; k++) {
                if (!strcmp(nd->params[k].key, "file"))
                    f = nd->params[k].value;
                else if (!strcmp(nd->params[k].key, "tokenizer"))
                    t = nd->params[k].value;
            }
            if ((pass || (f && !strcmp(f, file))) && t && *t)
                return t;
        }
    }
    return NULL;
}

/* The model folder's name (gpt2 or model node), for Neuronpedia's modelId. */
static char *pipeline_model(const run_t *r)
{
    for (int i = 0; r->pipe && i < r->pipe->nnodes; i++) {
        const dm_node_decl *nd = &r->pipe->nodes[i];
        if (strcmp(nd->op, "gpt2") && strcmp(nd->op, "model"))
            continue;
        for (int k = 0; k < nd->nparams; k++)
            if (!strcmp(nd->params[k].key, "model")) {
                const char *v = nd->params[k].value, *slash;
                size_t len = strlen(v);
                while (len > 1 && v[len - 1] == '/')
                    len--;
                for (slash = v + len; slash > v && slash[-1] != '/'; slash--)
                    ;
                return dm_xasprintf("%.*s", (int)(len - (size_t)(slash - v)), slash);
            }
    }
    return dm_xstrdup("unknown-model");
}

static int open_decomp(run_t *r, decomp *d, const char *tokdir_arg)
{
    d->top_path = dm_xasprintf("%s/%s_top_examples.json", r->run, d->name);
    d->src_path = dm_xasprintf("%s/%s_sources.npy", r->run, d->name);
    if (!(d->top = load_json(d->top_path)))
        return -1;
    d->comps = json_object_get(d->top, "components");
    if (!json_is_array(d->comps))
        return dm_failc(DM_E_CORRUPT, "%s: no \"components\" list: not a topk node's product", d->top_path);
    d->K = (int64_t)json_array_size(d->comps);
    if (!access(d->src_path, F_OK)) {
        if (!(d->src = dm_npy_open(d->src_path)))
            return -1;
        const dm_npy_header *h = dm_npy_hdr(d->src);
        if (h->dtype != DM_F32 || h->ndim != 2)
            return dm_failc(DM_E_CORRUPT, "%s: a 2-D float32 array (rows x components) expected, found %s with %d "
                            "dimensions", d->src_path, dm_dtype_name(h->dtype), h->ndim);
        d->rows = h->shape[0];
        d->S = dm_npy_data(d->src);
        if (h->shape[1] != d->K)
            return dm_failc(DM_E_CORRUPT, "%s has %lld components but %s has %lld columns: not from the same run",
                            d->top_path, (long long)d->K, d->src_path, (long long)h->shape[1]);
    }
    /* statistics: results.json's NAME_components, or (FastICA's) components */
    if (r->results) {
        char *key = dm_xasprintf("%s_components", d->name);
        d->stats = json_object_get(r->results, key);
        if (!d->stats && !strcmp(d->name, "ica"))
            d->stats = json_object_get(r->results, "components");
        if (d->stats && (!json_is_array(d->stats) || (int64_t)json_array_size(d->stats) != d->K))
            d->stats = NULL; /* another run's or another shape: leave it out rather than mislabel */
        free(key);
    }
    char *dirs = dm_xasprintf("%s/%s_directions.npy", r->run, d->name);
    if (!access(dirs, F_OK)) {
        if (dm_npy_load(dirs, &d->dirs)) {
            free(dirs);
            return -1;
        }
        if ((d->dirs.dtype != DM_F32 && d->dirs.dtype != DM_F64) || d->dirs.ndim != 2 || d->dirs.shape[0] != d->K) {
            int rc = dm_failc(DM_E_CORRUPT, "%s: a float array of %lld rows (one per component) expected", dirs,
                              (long long)d->K);
            free(dirs);
            return rc;
        }
        d->have_dirs = 1;
    }
    free(dirs);
    /* a tokenizer only when the examples have token windows */
    int windows = 0;
    json_t *c0 = json_array_get(d->comps, 0), *t0 = json_array_get(json_object_get(c0, "top"), 0);
    windows = t0 && json_object_get(t0, "context_ids");
    if (windows) {
        char *file = dm_xasprintf("%s_top_examples.json", d->name);
        const char *tokdir = tokdir_arg ? tokdir_arg : pipeline_tokenizer(r, file);
        free(file);
        if (!tokdir)
            return dm_failc(DM_E_INPUT, "%s: no tokenizer: %s/pipeline.yaml names none for the topk node that wrote "
                            "it; give --tokenizer DIR", d->top_path, r->run);
        if (!(d->tok = dm_tokenizer_load(tokdir))) {
            char *why = dm_xstrdup(dm_error());
            int rc = dm_failc(DM_E_INPUT, "the run's tokenizer (%s; --tokenizer DIR to give another): %s", tokdir, why);
            free(why);
            return rc;
        }
    }
    return 0;
}

static void close_decomp(decomp *d)
{
    free(d->name), free(d->top_path), free(d->src_path);
    json_decref(d->top);
    dm_npy_close(d->src);
    if (d->have_dirs)
        dm_tensor_free(&d->dirs);
    dm_tokenizer_free(d->tok);
}

static int get_int(json_t *o, const char *key, int64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return -1;
    *out = json_integer_value(v);
    return 0;
}

/* Example i of list `kind` of component j, checked against the sources. */
static int make_example(const decomp *d, int64_t j, const char *kind, size_t i, json_t *e, example *x)
{
    memset(x, 0, sizeof *x);
    json_t *jv = json_object_get(e, "value");
    if (!json_is_object(e) || get_int(e, "row", &x->row) || !json_is_number(jv))
        return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: no integer \"row\" and number \"value\"",
                        d->top_path, (long long)j, kind, i);
    x->value = json_number_value(jv);
    if (x->row < 0 || (d->S && x->row >= d->rows))
        return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: row %lld, but %s has %lld rows: not "
                        "from the same run", d->top_path, (long long)j, kind, i, (long long)x->row, d->src_path,
                        (long long)d->rows);
    float s = d->S ? d->S[x->row * d->K + j] : (float)x->value;
    if (s != (float)x->value)
        return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: value %.9g at row %lld, but %s holds "
                        "%.9g there: not from the same run", d->top_path, (long long)j, kind, i, x->value,
                        (long long)x->row, d->src_path, (double)s);
    json_t *ctx = json_object_get(e, "context_ids"), *cv = json_object_get(e, "context_values");
    int64_t pos = 0, first = x->row;
    if (ctx) {
        if (!json_is_array(ctx) || !json_array_size(ctx) || get_int(e, "context_start", &x->start) ||
            get_int(e, "position", &pos) || get_int(e, "window", &x->window) || pos < x->start ||
            pos - x->start >= (int64_t)json_array_size(ctx))
            return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: its context (context_ids, "
                            "context_start, position, window) does not hold together", d->top_path, (long long)j,
                            kind, i);
        x->n = (int64_t)json_array_size(ctx);
        x->anchor = pos - x->start;
        first = x->row - x->anchor;
        if (first < 0 || (d->S && first + x->n > d->rows))
            return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: context rows %lld..%lld outside %s's "
                            "%lld rows", d->top_path, (long long)j, kind, i, (long long)first,
                            (long long)(first + x->n - 1), d->src_path, (long long)d->rows);
        if (cv && (!json_is_array(cv) || (int64_t)json_array_size(cv) != x->n))
            return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: context_values is not a list as long "
                            "as context_ids", d->top_path, (long long)j, kind, i);
        if (!cv && !d->S)
            return dm_failc(DM_E_INPUT, "%s: missing, and %s keeps no context_values (written by an older topk): "
                            "the export has no per-token values; keep the sources with an npy_sink node, or "
                            "rerun the topk node", d->src_path, d->top_path);
    } else {
        x->n = 1, x->anchor = 0, x->window = -1, x->start = -1;
    }
    x->ids = dm_xmalloc((size_t)x->n * sizeof *x->ids);
    x->str = dm_xcalloc((size_t)x->n, sizeof *x->str);
    x->val = dm_xmalloc((size_t)x->n * sizeof *x->val);
    x->max = -INFINITY, x->min = INFINITY, x->max_index = 0;
    for (int64_t t = 0; t < x->n; t++) {
        float v = (float)x->value; /* without windows, the example's own row */
        json_t *kept = cv ? json_array_get(cv, (size_t)t) : NULL;
        if (kept && !json_is_number(kept) && !json_is_null(kept))
            return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: context_values[%lld] is not a number",
                            d->top_path, (long long)j, kind, i, (long long)t);
        if (d->S) {
            v = d->S[(first + t) * d->K + j];
            if (json_is_number(kept) && (float)json_number_value(kept) != v)
                return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: context value %.9g at row %lld, "
                                "but %s holds %.9g there: not from the same run", d->top_path, (long long)j, kind,
                                i, json_number_value(kept), (long long)(first + t), d->src_path, (double)v);
        } else if (ctx) {
            if (!json_is_number(kept))
                return dm_failc(DM_E_INPUT, "%s: component %lld, %s example %zu: the value at row %lld was not kept "
                                "(the run's shards cut a token window) and %s is missing: keep the sources with an "
                                "npy_sink node to export it", d->top_path, (long long)j, kind, i,
                                (long long)(first + t), d->src_path);
            v = (float)json_number_value(kept);
        }
        x->val[t] = isfinite(v) ? v : NAN;
        if (isfinite(v) && v > x->max)
            x->max = v, x->max_index = t;
        if (isfinite(v) && v < x->min)
            x->min = v;
        if (!ctx) {
            x->ids[t] = -1;
            x->str[t] = dm_xasprintf("<row %lld>", (long long)x->row);
            continue;
        }
        json_t *id = json_array_get(ctx, (size_t)t);
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT32_MAX)
            return dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: context_ids[%lld] is not a token id",
                            d->top_path, (long long)j, kind, i, (long long)t);
        x->ids[t] = (int32_t)json_integer_value(id);
        if (!(x->str[t] = dm_tokenizer_decode_token(d->tok, x->ids[t], NULL))) {
            char *why = dm_xstrdup(dm_error());
            int rc = dm_failc(DM_E_CORRUPT, "%s: component %lld, %s example %zu: %s (the run's tokenizer?)",
                              d->top_path, (long long)j, kind, i, why);
            free(why);
            return rc;
        }
    }
    if (!isfinite(x->max))
        x->max = x->min = 0;
    return 0;
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* The numbers of results.json's entry for component j. */
static json_t *stats_json(const decomp *d, int64_t j)
{
    json_t *o = json_object(), *c = d->stats ? json_array_get(d->stats, (size_t)j) : NULL;
    const char *k;
    json_t *v;
    json_object_foreach(c, k, v)
    {
        if (strcmp(k, "component") && json_is_number(v))
            json_object_set(o, k, v);
    }
    return o;
}

/* ---- jsonl: delphi's example fields ---------------------------------------- */

static json_t *example_jsonl(const example *x)
{
    json_t *o = json_object(), *ids = json_array(), *str = json_array(), *val = json_array();
    for (int64_t t = 0; t < x->n; t++) {
        json_array_append_new(ids, json_integer(x->ids[t]));
        json_array_append_new(str, json_string(x->str[t]));
        json_array_append_new(val, num(x->val[t]));
    }
    json_object_set_new(o, "tokens", ids);
    json_object_set_new(o, "str_tokens", str);
    json_object_set_new(o, "activations", val);
    json_object_set_new(o, "max_activation", json_real(x->max));
    json_object_set_new(o, "max_index", json_integer(x->max_index));
    json_object_set_new(o, "index", json_integer(x->anchor));
    json_object_set_new(o, "value", json_real(x->value));
    json_object_set_new(o, "row", json_integer(x->row));
    json_object_set_new(o, "window", x->window >= 0 ? json_integer(x->window) : json_null());
    json_object_set_new(o, "start", x->start >= 0 ? json_integer(x->start) : json_null());
    return o;
}

/* ---- neuronpedia ------------------------------------------------------------ */

static json_t *example_np(const example *x, const char *source, const char *model, const char *creator, int64_t j,
                          const char *kind, size_t i)
{
    json_t *o = json_object(), *str = json_array(), *val = json_array();
    double mx = -INFINITY, mn = INFINITY;
    int64_t at = 0;
    for (int64_t t = 0; t < x->n; t++) {
        double v = isfinite(x->val[t]) ? x->val[t] : 0; /* as Neuronpedia's converter replaces NaN */
        json_array_append_new(str, json_string(x->str[t]));
        json_array_append_new(val, json_real(v));
        if (v > mx)
            mx = v, at = t;
        mn = v < mn ? v : mn;
    }
    char *id = dm_xasprintf("%s-%lld-%s-%zu", source, (long long)j, kind, i);
    json_object_set_new(o, "id", json_string(id));
    free(id);
    json_object_set_new(o, "tokens", str);
    json_object_set_new(o, "index", json_sprintf("%lld", (long long)j));
    json_object_set_new(o, "layer", json_string(source));
    json_object_set_new(o, "modelId", json_string(model));
    json_object_set_new(o, "maxValue", json_real(mx));
    json_object_set_new(o, "maxValueTokenIndex", json_integer(at));
    json_object_set_new(o, "minValue", json_real(mn));
    json_object_set_new(o, "values", val);
    json_object_set_new(o, "creatorId", json_string(creator));
    json_object_set_new(o, "dataSource", json_string(kind));
    json_object_set_new(o, "dataIndex", json_sprintf("%lld", (long long)x->row));
    json_object_set_new(o, "qualifyingTokenIndex", json_integer(x->anchor));
    return o;
}

/* The feature record: its histogram as frequency bars, its direction as the
 * steering vector. */
static json_t *feature_np(const decomp *d, int64_t j, json_t *comp, const char *source, const char *model,
                          const char *creator, const char *hook, double max_act)
{
    json_t *o = json_object();
    json_object_set_new(o, "modelId", json_string(model));
    json_object_set_new(o, "layer", json_string(source));
    json_object_set_new(o, "index", json_sprintf("%lld", (long long)j));
    json_object_set_new(o, "creatorId", json_string(creator));
    json_object_set_new(o, "maxActApprox", json_real(max_act));
    json_object_set_new(o, "hasVector", json_boolean(d->have_dirs));
    json_t *vec = json_array();
    if (d->have_dirs)
        for (int64_t c = 0; c < d->dirs.shape[1]; c++)
            json_array_append_new(vec, json_real(d->dirs.dtype == DM_F32
                                                     ? ((const float *)d->dirs.data)[j * d->dirs.shape[1] + c]
                                                     : ((const double *)d->dirs.data)[j * d->dirs.shape[1] + c]));
    json_object_set_new(o, "vector", vec);
    json_object_set_new(o, "hookName", d->have_dirs && hook ? json_string(hook) : json_null());
    if (d->have_dirs)
        json_object_set_new(o, "vectorDefaultSteerStrength", json_real(max_act));
    json_t *h = json_object_get(comp, "histogram"), *counts = json_object_get(h, "counts");
    json_t *heights = json_array(), *centres = json_array();
    if (json_is_array(counts) && json_array_size(counts)) {
        double lo = json_number_value(json_object_get(h, "lo")), hi = json_number_value(json_object_get(h, "hi"));
        size_t nb = json_array_size(counts);
        for (size_t b = 0; b < nb; b++) {
            json_array_append(heights, json_array_get(counts, b));
            json_array_append_new(centres, json_real(lo + (hi - lo) * ((double)b + 0.5) / (double)nb));
        }
    }
    json_object_set_new(o, "freq_hist_data_bar_heights", heights);
    json_object_set_new(o, "freq_hist_data_bar_values", centres);
    json_object_set_new(o, "frac_nonzero", json_real(1.0));
    return o;
}

/* gzip (RFC 1952) of data with stored deflate blocks (RFC 1951 section
 * 3.2.4): no compression, no zlib needed, read by gzip and Python's gzip as
 * any other. */
static uint32_t crc32_of(const unsigned char *p, size_t n)
{
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static int write_gzip(const char *path, const char *data, size_t n)
{
    size_t blocks = n / 65535 + 1, cap = 10 + n + blocks * 5 + 8, o = 0;
    unsigned char *g = dm_xmalloc(cap);
    static const unsigned char head[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255};
    memcpy(g, head, 10), o = 10;
    for (size_t off = 0, b = 0; b < blocks; b++) {
        size_t len = n - off < 65535 ? n - off : 65535;
        g[o++] = b + 1 == blocks;
        g[o++] = len & 0xff, g[o++] = len >> 8;
        g[o++] = ~len & 0xff, g[o++] = (~len >> 8) & 0xff;
        memcpy(g + o, data + off, len);
        o += len, off += len;
    }
    uint32_t crc = crc32_of((const unsigned char *)data, n), sz = (uint32_t)n;
    for (int k = 0; k < 4; k++)
        g[o++] = (crc >> (8 * k)) & 0xff;
    for (int k = 0; k < 4; k++)
        g[o++] = (sz >> (8 * k)) & 0xff;
    int rc = dm_write_file_atomic(path, g, o);
    free(g);
    return rc;
}

static int write_text(const char *path, const char *s)
{
    return dm_write_file_atomic(path, s, strlen(s));
}

/* Appends o as one line to *buf (o is released). */
static void append_line(char **buf, size_t *len, json_t *o)
{
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    size_t l = strlen(line);
    *buf = dm_xrealloc(*buf, *len + l + 2);
    memcpy(*buf + *len, line, l);
    (*buf)[*len + l] = '\n';
    *len += l + 1;
    (*buf)[*len] = 0;
    free(line);
}

/* ---- prompts ---------------------------------------------------------------- */

/* The tokens with runs above threshold x max marked <<so>> (delphi's
 * Explainer._highlight), of the values times sign (-1: the most negative
 * marked, for bottom examples); new lines shown as \n so an example stays one
 * line. */
static int marked(const example *x, int64_t t, double cut, int sign)
{
    return isfinite(x->val[t]) && sign * x->val[t] > cut;
}

static void highlight(FILE *f, const example *x, double threshold, int sign)
{
    double cut = (sign > 0 ? x->max : -x->min) * threshold;
    for (int64_t t = 0; t < x->n;) {
        int on = marked(x, t, cut, sign);
        if (on)
            fputs("<<", f);
        do {
            for (const char *s = x->str[t]; *s; s++)
                fputs(*s == '\n' ? "\\n" : (char[2]){*s, 0}, f);
            t++;
        } while (on && t < x->n && marked(x, t, cut, sign));
        if (on)
            fputs(">>", f);
    }
}

/* ---- the command ------------------------------------------------------------- */

static const char *const kinds[] = {"top", "bottom", "random"};

int dm_cmd_export(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&export_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *fmt = dm_arg_str(&a, "format");
    int np = !strcmp(fmt, "neuronpedia");
    if (!np && strcmp(fmt, "jsonl")) {
        rc = dm_args_usage_error(&a, "--format must be jsonl or neuronpedia, not '%s'", fmt);
        dm_args_free(&a);
        return rc;
    }
    run_t r = {.run = a.pos[0]};
    char *out = dm_arg_str(&a, "out") ? dm_xstrdup(dm_arg_str(&a, "out"))
                                      : dm_xasprintf("%s/%s", r.run, np ? "neuronpedia" : "components.jsonl");
    const char *prompts = dm_arg_str(&a, "prompts");
    double threshold = dm_arg_float(&a, "threshold");
    char **names = NULL, *tmp_out = NULL, *tmp_prompts = NULL, *model = NULL, *buf = NULL;
    size_t blen = 0;
    int nnames = 0;
    rc = find_decomps(r.run, &names, &nnames);
    char *respath = dm_xasprintf("%s/results.json", r.run), *pipepath = dm_xasprintf("%s/pipeline.yaml", r.run);
    if (!rc && !access(respath, F_OK) && !(r.results = load_json(respath)))
        rc = -1;
    if (!rc && !access(pipepath, F_OK) && !(r.pipe = dm_pipeline_load(pipepath)))
        rc = -1;
    r.d = dm_xcalloc((size_t)(nnames ? nnames : 1), sizeof *r.d);
    for (int i = 0; i < nnames; i++) {
        r.d[i].name = names[i];
        r.nd++;
        if (!rc)
            rc = open_decomp(&r, &r.d[i], dm_arg_str(&a, "tokenizer"));
    }
    const char *hook = r.results ? json_string_value(json_object_get(r.results, "hook")) : NULL;
    if (hook && !*hook)
        hook = NULL; /* a run without a model (planted data) */
    json_t *jl = r.results ? json_object_get(r.results, "layer") : NULL;
    long long layer = json_is_integer(jl) ? (long long)json_integer_value(jl) : 0;
    model = dm_arg_str(&a, "model-id") ? dm_xstrdup(dm_arg_str(&a, "model-id")) : pipeline_model(&r);
    const char *creator = dm_arg_str(&a, "creator-id"), *set = dm_arg_str(&a, "source-set");
    if (!rc && np) {
        tmp_out = dm_xasprintf("%s.tmp.%ld", out, (long)getpid());
        dm_rm_rf(tmp_out);
        rc = dm_mkdir_p(tmp_out);
    }
    if (!rc && prompts) {
        tmp_prompts = dm_xasprintf("%s.tmp.%ld", prompts, (long)getpid());
        dm_rm_rf(tmp_prompts);
        rc = dm_mkdir_p(tmp_prompts);
    }
    for (int di = 0; di < r.nd && !rc; di++) {
        decomp *d = &r.d[di];
        char *source = dm_xasprintf("%lld-%s-%s", layer, set, d->name), *dir = NULL;
        char *feats = NULL, *acts = NULL;
        size_t flen = 0, alen = 0;
        if (np) {
            dir = dm_xasprintf("%s/%s", tmp_out, source);
            rc = dm_mkdir_p(dir);
            char *sub = dm_xasprintf("%s/features", dir);
            if (!rc)
                rc = dm_mkdir_p(sub);
            free(sub);
            sub = dm_xasprintf("%s/activations", dir);
            if (!rc)
                rc = dm_mkdir_p(sub);
            free(sub);
        }
        for (int64_t j = 0; j < d->K && !rc; j++) {
            json_t *comp = json_array_get(d->comps, (size_t)j), *lists[3];
            json_t *line = json_object(), *lat = json_object();
            double max_act = 0;
            FILE *pf = NULL;
            char *ppath = NULL;
            if (tmp_prompts) {
                ppath = dm_xasprintf("%s/%s_%lld.txt", tmp_prompts, d->name, (long long)j);
                if (!(pf = fopen(ppath, "w")))
                    rc = dm_failc(DM_E_IO, "%s: %s", ppath, strerror(errno));
                else
                    fprintf(pf, "Component %lld of %s%s%s. Each example is a window of text; the tokens where "
                            "the component's value exceeds %g of the example's maximum are marked <<like this>>. "
                            "Explain in one sentence what the marked tokens have in common, given their "
                            "context.\n", (long long)j, d->name, hook ? " at " : "", hook ? hook : "", threshold);
            }
            json_object_set_new(lat, "module_name",
                                hook ? json_sprintf("%s/%s", hook, d->name) : json_string(d->name));
            json_object_set_new(lat, "latent_index", json_integer(j));
            json_object_set_new(line, "decomposition", json_string(d->name));
            json_object_set_new(line, "component", json_integer(j));
            json_object_set_new(line, "latent", lat);
            json_object_set_new(line, "stats", stats_json(d, j));
            for (int k = 0; k < 3 && !rc; k++) {
                lists[k] = json_object_get(comp, kinds[k]);
                json_t *arr = json_array();
                json_object_set_new(line, kinds[k], arr);
                if (!lists[k] && k == 2)
                    continue; /* a run from before topk sampled */
                if (!json_is_array(lists[k])) {
                    rc = dm_failc(DM_E_CORRUPT, "%s: component %lld has no \"%s\" list", d->top_path, (long long)j,
                                  kinds[k]);
                    break;
                }
                if (pf && k < 2)
                    fprintf(pf, "\n%s examples (%s):\n", k ? "Most negative" : "Top",
                            k ? "lowest values first; marked: below that fraction of the example's minimum"
                              : "highest values first");
                size_t i;
                json_t *e;
                json_array_foreach(lists[k], i, e)
                {
                    example x;
                    if ((rc = make_example(d, j, kinds[k], i, e, &x))) {
                        example_free(&x);
                        break;
                    }
                    if (k == 0 && x.max > max_act)
                        max_act = x.max;
                    if (np)
                        append_line(&acts, &alen, example_np(&x, source, model, creator, j, kinds[k], i));
                    else
                        json_array_append_new(arr, example_jsonl(&x));
                    if (pf && k < 2) {
                        fprintf(pf, "Example %zu: ", i + 1);
                        highlight(pf, &x, threshold, k ? -1 : 1);
                        fputc('\n', pf);
                    }
                    example_free(&x);
                }
            }
            if (pf && fclose(pf) && !rc)
                rc = dm_failc(DM_E_IO, "%s: write failed: %s", ppath, strerror(errno));
            free(ppath);
            if (!rc && np)
                append_line(&feats, &flen, feature_np(d, j, comp, source, model, creator, hook, max_act));
            if (!rc && !np)
                append_line(&buf, &blen, line);
            else
                json_decref(line);
        }
        if (!rc && np) {
            /* the records Neuronpedia's import reads beside the batches */
            char *p = dm_xasprintf("%s/features/batch-0.jsonl.gz", dir);
            rc = write_gzip(p, feats ? feats : "", flen);
            free(p);
            p = dm_xasprintf("%s/activations/batch-0.jsonl.gz", dir);
            if (!rc)
                rc = write_gzip(p, acts ? acts : "", alen);
            free(p);
            json_t *src = json_pack("{s:s, s:s, s:s, s:s, s:b, s:s, s:s}", "id", source, "modelId", model,
                                    "setName", set, "creatorId", creator, "hasDashboards", 1, "visibility", "PUBLIC",
                                    "notes", "dmica export");
            json_t *sset = json_pack("{s:s, s:s, s:s, s:b, s:s, s:s, s:s, s:s}", "modelId", model, "name", set,
                                     "creatorId", creator, "hasDashboards", 1, "visibility", "PUBLIC", "description",
                                     "dmica components (ICA of SAE residuals)", "creatorName", creator, "releaseName",
                                     set);
            json_t *rel = json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", set, "description",
                                    "dmica components (ICA of SAE residuals)", "creatorName", creator, "creatorId",
                                    creator, "visibility", "PUBLIC");
            json_t *mod = json_pack("{s:s, s:b, s:s, s:s, s:s, s:s}", "id", model, "instruct", 0, "creatorId", creator,
                                    "displayNameShort", model, "displayName", model, "visibility", "PUBLIC");
            const char *files[4] = {"source.jsonl", "sourceset.jsonl", "release.jsonl", "model.jsonl"};
            json_t *recs[4] = {src, sset, rel, mod};
            for (int f = 0; f < 4; f++) {
                char *text = NULL;
                size_t tl = 0;
                append_line(&text, &tl, recs[f]);
                p = dm_xasprintf("%s/%s", dir, files[f]);
                if (!rc)
                    rc = write_text(p, text);
                free(p), free(text);
            }
        }
        free(feats), free(acts), free(dir), free(source);
    }
    /* everything is there: put it in place */
    if (!rc && np)
        rc = dm_dir_publish(tmp_out, out);
    else if (!rc)
        rc = dm_write_file_atomic(out, buf ? buf : "", blen);
    if (!rc && tmp_prompts)
        rc = dm_dir_publish(tmp_prompts, prompts);
    if (tmp_out)
        dm_rm_rf(tmp_out);
    if (tmp_prompts)
        dm_rm_rf(tmp_prompts);
    if (rc)
        fprintf(stderr, "dmica export: %s\n", dm_error());
    else
        fprintf(stderr, "dmica export: %d decomposition%s (", r.nd, r.nd == 1 ? "" : "s");
    for (int i = 0; !rc && i < r.nd; i++)
        fprintf(stderr, "%s%s: %lld components", i ? ", " : "", r.d[i].name, (long long)r.d[i].K);
    if (!rc)
        fprintf(stderr, ") -> %s%s%s\n", out, prompts ? ", prompts in " : "", prompts ? prompts : "");
    for (int i = 0; i < r.nd; i++)
        close_decomp(&r.d[i]);
    for (int i = r.nd; i < nnames; i++)
        free(names[i]);
    free(names), free(r.d), free(out), free(respath), free(pipepath), free(tmp_out), free(tmp_prompts);
    free(model), free(buf);
    json_decref(r.results);
    if (r.pipe)
        dm_pipeline_free(r.pipe);
    dm_args_free(&a);
    return rc ? 1 : 0;
}
