/*
 * main.c: the dmica command line. Commands are thin: they build or load a
 * pipeline and hand it to the engine, or call one operator's command entry.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "commands.h"

extern const char dm_demo_pipeline[];
/* Writes the SAE that `planted` nodes (the demo's data) are analysed with. */
int dm_planted_prepare(const dm_pipeline *p);


typedef struct {
    const char *out, *cache, *pipeline;
    char **sets, **force;
    int nsets, nforce, threads, quiet, demo, expanded;
    int64_t memory;
} run_opts;

static void usage(FILE *f)
{
    fputs("usage: dmica COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  run PIPELINE.yaml   run a pipeline, reusing cached results of unchanged nodes\n"
          "  plan PIPELINE.yaml  show the pipeline's nodes and which are cached or stale, and why\n"
          "  demo                run the embedded default pipeline\n"
          "  stats               moments, covariance and PCA of a .npy matrix\n"
          "  ops                 list the operators and their parameters\n"
          "  tokenize            GPT-2 token ids of a text file\n"
          "  activations         GPT-2 activations at a hook for windows of token ids\n"
          "  sae                 an SAE's residual and statistics on a .npy of activations\n"
          "  ica                 whitening and FastICA of a .npy matrix\n"
          "  analyze             the plan's steps 4-9 on activations you already have\n"
          "  top                 a component's top tokens from a run folder\n"
          "\n"
          "`dmica COMMAND --help` describes a command's options.\n",
          f);
}

static void run_usage(FILE *f, const char *cmd)
{
    fprintf(f,
            "usage: dmica %s %s[options]\n"
            "\n"
            "  --out DIR           copy the results (products) into DIR\n"
            "  --set NODE.KEY=VAL  override a node's parameter (repeatable)\n"
            "  --force NODE        rerun NODE and everything that depends on it (repeatable)\n"
            "  --threads N         worker threads (default: all cores)\n"
            "  --memory SIZE       memory budget, e.g. 512M or 4G (default: the pipeline's, else 1G)\n"
            "  --cache DIR         cache folder (default: the pipeline's, else $DMICA_CACHE, else .dmica-cache)\n"
            "  --quiet             no progress output\n"
            "%s",
            cmd, strcmp(cmd, "demo") ? "PIPELINE.yaml " : "",
            strcmp(cmd, "plan") ? "" : "  --expanded          print the pipeline with its templates expanded (and --set applied)\n");
}

static int parse_run_opts(int argc, char **argv, const char *cmd, run_opts *o)
{
    static const struct option longopts[] = {
        {"out", required_argument, 0, 'o'},     {"set", required_argument, 0, 's'},
        {"force", required_argument, 0, 'f'},   {"threads", required_argument, 0, 't'},
        {"memory", required_argument, 0, 'm'},  {"cache", required_argument, 0, 'c'},
        {"quiet", no_argument, 0, 'q'},         {"help", no_argument, 0, 'h'},
        {"expanded", no_argument, 0, 'x'},      {0, 0, 0, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:s:f:t:m:c:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': o->out = optarg; break;
        case 's':
            o->sets = dm_xrealloc(o->sets, (size_t)(o->nsets + 1) * sizeof *o->sets);
            o->sets[o->nsets++] = optarg;
            break;
        case 'f':
            o->force = dm_xrealloc(o->force, (size_t)(o->nforce + 1) * sizeof *o->force);
            o->force[o->nforce++] = optarg;
            break;
        case 't': {
            char *e;
            long t = strtol(optarg, &e, 10);
            if (*e || t < 1 || t > 4096) {
                fprintf(stderr, "dmica %s: --threads must be a positive integer, not '%s'\n", cmd, optarg);
                return 2;
            }
            o->threads = (int)t;
            break;
        }
        case 'm':
            if ((o->memory = dm_parse_size(optarg)) <= 0) {
                fprintf(stderr, "dmica %s: --memory: %s\n", cmd, dm_error());
                return 2;
            }
            break;
        case 'c': o->cache = optarg; break;
        case 'q': o->quiet = 1; break;
        case 'x':
            if (strcmp(cmd, "plan")) {
                fprintf(stderr, "dmica %s: --expanded is an option of `dmica plan`\n", cmd);
                return 2;
            }
            o->expanded = 1;
            break;
        case 'h': run_usage(stdout, cmd); return 1;
        default: run_usage(stderr, cmd); return 2;
        }
    }
    if (!o->demo) {
        if (optind != argc - 1) {
            fprintf(stderr, "dmica %s: expected one pipeline file\n", cmd);
            run_usage(stderr, cmd);
            return 2;
        }
        o->pipeline = argv[optind];
    } else if (optind != argc) {
        fprintf(stderr, "dmica %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return 2;
    }
    return 0;
}

/* Loads, overrides, binds and configures a graph from options. */
static dm_graph *setup(run_opts *o, dm_pipeline **pout)
{
    dm_pipeline *p = o->demo ? dm_pipeline_parse("<embedded demo pipeline>", dm_demo_pipeline, strlen(dm_demo_pipeline))
                             : dm_pipeline_load(o->pipeline);
    if (!p)
        return NULL;
    for (int i = 0; i < o->nsets; i++)
        if (dm_pipeline_set(p, o->sets[i])) {
            dm_pipeline_free(p);
            return NULL;
        }
    if (dm_planted_prepare(p)) {
        dm_pipeline_free(p);
        return NULL;
    }
    dm_graph *g = dm_graph_build(p);
    if (!g) {
        dm_pipeline_free(p);
        return NULL;
    }
    const char *env = getenv("DMICA_CACHE");
    g->cache = dm_xstrdup(o->cache ? o->cache : p->cache ? p->cache : env && *env ? env : ".dmica-cache");
    g->out = o->out ? dm_xstrdup(o->out) : NULL;
    g->memory = o->memory ? o->memory : p->memory ? p->memory : (int64_t)1 << 30;
    for (int i = 0; i < o->nforce; i++) {
        g->force = dm_xrealloc(g->force, (size_t)(g->nforce + 1) * sizeof *g->force);
        g->force[g->nforce++] = dm_xstrdup(o->force[i]);
    }
    dm_compute_set_threads(o->threads ? o->threads : p->threads);
    dm_progress_enabled = !o->quiet;
    *pout = p;
    return g;
}

static int cmd_run_like(int argc, char **argv, const char *cmd, int plan_only, int demo)
{
    run_opts o = {0};
    o.demo = demo;
    int rc = parse_run_opts(argc, argv, cmd, &o);
    if (rc) {
        free(o.sets), free(o.force);
        return rc == 1 ? 0 : rc;
    }
    dm_pipeline *p = NULL;
    if (o.expanded) { /* the declarations as the engine sees them, before binding checks them */
        p = dm_pipeline_load(o.pipeline);
        for (int i = 0; p && i < o.nsets; i++)
            if (dm_pipeline_set(p, o.sets[i]))
                dm_pipeline_free(p), p = NULL;
        free(o.sets), free(o.force);
        if (!p) {
            fprintf(stderr, "dmica: %s\n", dm_error());
            return 1;
        }
        dm_pipeline_write(p, stdout);
        dm_pipeline_free(p);
        return 0;
    }
    dm_graph *g = setup(&o, &p);
    free(o.sets), free(o.force);
    if (!g) {
        fprintf(stderr, "dmica: %s\n", dm_error());
        return dm_error_exit();
    }
    double t0 = dm_now();
    if (plan_only)
        rc = dm_plan(g);
    else
        rc = dm_run(g);
    if (!rc && (plan_only || !o.quiet))
        dm_plan_print(g, plan_only ? stdout : stderr);
    if (rc)
        fprintf(stderr, "dmica: %s\n", dm_error());
    else if (!plan_only && !o.quiet)
        fprintf(stderr, "dmica: done in %.1f s%s%s\n", dm_now() - t0, g->out ? ", results in " : "",
                g->out ? g->out : "");
    dm_graph_free(g);
    dm_pipeline_free(p);
    return rc ? dm_error_exit() : 0;
}

static int cmd_stats(int argc, char **argv)
{
    const char *in = NULL;
    char **rest = dm_xcalloc((size_t)argc + 2, sizeof *rest);
    int nrest = 0;
    rest[nrest++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--in") && i + 1 < argc)
            in = argv[++i];
        else if (!strncmp(argv[i], "--in=", 5))
            in = argv[i] + 5;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: dmica stats --in X.npy --out DIR [--threads N] [--memory SIZE] [--cache DIR] [--quiet]\n"
                   "\n"
                   "One pass over X (2-D float32 or float16) writes DIR/stats.json (n, and per column mean, var,\n"
                   "skew, excess_kurtosis: population moments), DIR/covariance.npy (float64 d x d, divided by n),\n"
                   "DIR/pca.json (eigenvalues descending, explained_variance_ratio) and DIR/pca_components.npy\n"
                   "(d x d, one component per row).\n");
            free(rest);
            return 0;
        } else
            rest[nrest++] = argv[i];
    }
    if (!in) {
        fprintf(stderr, "dmica stats: --in X.npy is required (see dmica stats --help)\n");
        free(rest);
        return 2;
    }
    run_opts o = {0};
    o.demo = 1; /* no pipeline file argument */
    int rc = parse_run_opts(nrest, rest, "stats", &o);
    free(rest);
    if (rc || !o.out) {
        if (!rc)
            fprintf(stderr, "dmica stats: --out DIR is required\n");
        free(o.sets), free(o.force);
        return rc == 1 ? 0 : 2;
    }
    char *q = dm_yaml_quote(in);
    char *text = dm_xasprintf("name: stats\n"
                              "nodes:\n"
                              "  input: {op: npy, params: {path: %s}}\n"
                              "  moments: {op: moments, inputs: {x: input}}\n"
                              "  covariance: {op: covariance, inputs: {x: input}}\n"
                              "  pca: {op: pca, inputs: {covariance: covariance.covariance}}\n",
                              q);
    free(q);
    dm_run_opts ro = {o.out, o.cache, o.memory, o.threads, o.quiet};
    rc = dm_run_yaml("<dmica stats>", text, &ro);
    free(text);
    free(o.sets), free(o.force);
    return rc;
}

static const char *ptype(dm_param_type t)
{
    static const char *names[] = {"int", "float", "string", "bool", "size", "path"};
    return (unsigned)t < 6 ? names[t] : "?";
}

static int cmd_ops(int argc, char **argv)
{
    const dm_op *const *r = dm_registry();
    for (int i = 0; r[i]; i++) {
        const dm_op *op = r[i];
        printf("%s (v%d): %s\n", op->name, op->version, op->summary ? op->summary : "");
        for (int k = 0; op->inputs && op->inputs[k].name; k++)
            printf("    input  %-14s %s%s%s\n", op->inputs[k].name,
                   op->inputs[k].kind == DM_PORT_STREAM ? "stream" : "tensor",
                   op->inputs[k].multipass ? ", several passes" : "", op->inputs[k].optional ? ", optional" : "");
        for (int k = 0; op->outputs && op->outputs[k].name; k++)
            printf("    output %-14s %s\n", op->outputs[k].name,
                   op->outputs[k].kind == DM_PORT_STREAM ? "stream" : "tensor");
        for (int k = 0; op->params && op->params[k].name; k++)
            printf("    param  %-14s %-6s %s%s%s%s\n", op->params[k].name, ptype(op->params[k].type),
                   op->params[k].help ? op->params[k].help : "", op->params[k].def ? " (default: " : " (required)",
                   op->params[k].def ? op->params[k].def : "", op->params[k].def ? ")" : "");
    }
    (void)argc, (void)argv;
    return 0;
}

int main(int argc, char **argv)
{
    /* OpenMP threads that spin after a parallel region take the cores from
     * OpenBLAS's own threads in the next GEMM (Debian's OpenBLAS uses pthreads):
     * measured 24 s against 16 s for the statistics of 1M x 768 rows. libgomp
     * reads its settings before main, so set the policy and start again. */
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0)
        execv("/proc/self/exe", argv); /* on failure, carry on as we are */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("dmica %s\n", DM_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "run"))
        return cmd_run_like(argc - 1, argv + 1, "run", 0, 0);
    if (!strcmp(cmd, "plan"))
        return cmd_run_like(argc - 1, argv + 1, "plan", 1, 0);
    if (!strcmp(cmd, "demo"))
        return cmd_run_like(argc - 1, argv + 1, "demo", 0, 1);
    if (!strcmp(cmd, "stats"))
        return cmd_stats(argc - 1, argv + 1);
    if (!strcmp(cmd, "ops"))
        return cmd_ops(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize"))
        return dm_cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "activations"))
        return dm_cmd_activations(argc - 1, argv + 1);
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } more[] = {{"sae", dm_cmd_sae}, {"ica", dm_cmd_ica}, {"analyze", dm_cmd_analyze}, {"top", dm_cmd_top}};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        if (!strcmp(cmd, more[i].name) && more[i].fn)
            return more[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "dmica: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
