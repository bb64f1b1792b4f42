/*
 * main.c: the dmica command line. Commands are thin: they build or load a
 * pipeline and hand it to the engine, or call one operator's command entry.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dist.h"
#include "engine.h"
#include "args.h"
#include "commands.h"

extern const char dm_demo_pipeline[];

typedef struct {
    const char *out, *cache, *pipeline;
    const char *const *sets, *const *force;
    int nsets, nforce, threads, quiet, demo, expanded;
    int64_t memory, shard;
    const char *device;
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
          "  analyze             the analysis (SAE residual to ICA and report) on activations you already have\n"
          "  causal RUN_DIR      the causal tests of a run: each ICA component ablated against null directions\n"
          "  top                 a component's top tokens from a run folder\n"
          "  export RUN_DIR      a run's components for autointerp (jsonl, delphi) and Neuronpedia (docs/exports.md)\n"
          "  cache du|gc|verify  the cache's size per pipeline and node; remove what no pipeline uses;\n"
          "                      check every cached file's checksum\n"
          "\n"
          "`dmica COMMAND --help` describes a command's options.\n",
          f);
}

/* The options of run, plan and demo; stats takes the same less --set and --force. */
#define RUN_OPTIONS                                                                                              \
    {"out", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0, "copy the results (products) into DIR"},                      \
        {"threads", DM_ARG_INT, "N", NULL, 0, 1, 4096, 0, "worker threads (default: all cores)"},                \
        {"memory", DM_ARG_SIZE, "SIZE", NULL, 0, 1, 0, 0,                                                       \
         "memory budget, e.g. 512M or 4G (default: the pipeline's, else 1G)"},                                  \
        {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0,                                                         \
         "cache folder (default: the pipeline's, else $DMICA_CACHE, else .dmica-cache)"},                       \
        {"device", DM_ARG_STRING, "cpu|cuda|auto", "cpu", 0, 0, 0, 0,                                          \
         "where the kernels run: auto or cuda use the GPU where one is (gpu/README.md)"},                   \
        {"precision", DM_ARG_STRING, "fp32|tf32|bf16", "fp32", 0, 0, 0, 0,                                     \
         "the GPU's matrix products (model and SAE): tf32 and bf16 use tensor cores (gpu/README.md)"},          \
        {"shard", DM_ARG_STRING, "ROWS", NULL, 0, 0, 0, 0,                                                      \
         "rows (tokens) per shard, e.g. 1M; 0: no shards (default: the pipeline's, else 1M)"},                  \
        {"quiet", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "no progress output"}

static const dm_arg_spec run_specs[] = {
    RUN_OPTIONS,
    {"set", DM_ARG_LIST, "NODE.KEY=VAL", NULL, 0, 0, 0, 0, "override a node's parameter"},
    {"force", DM_ARG_LIST, "NODE", NULL, 0, 0, 0, 0, "rerun NODE and everything that depends on it"},
    {NULL},
};

static const dm_arg_spec plan_specs[] = {
    RUN_OPTIONS,
    {"set", DM_ARG_LIST, "NODE.KEY=VAL", NULL, 0, 0, 0, 0, "override a node's parameter"},
    {"force", DM_ARG_LIST, "NODE", NULL, 0, 0, 0, 0, "rerun NODE and everything that depends on it"},
    {"expanded", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "print the pipeline with its templates expanded (and --set applied)"},
    {NULL},
};

static const dm_arg_cmd run_cmds[] = {
    {"run", "PIPELINE.yaml [options]", "Runs a pipeline, reusing the cached results of nodes whose inputs did not change.\n",
     run_specs, "PIPELINE.yaml", 1, 1},
    {"plan", "PIPELINE.yaml [options]",
     "Checks a pipeline (operators, parameters, connections, shapes) and shows which nodes are cached or stale, "
     "and why.\n",
     plan_specs, "PIPELINE.yaml", 1, 1},
    {"demo", "[options]",
     "Runs the embedded default pipeline (pipelines/demo.yaml): the analysis on planted data whose answer is "
     "known.\n",
     run_specs, NULL, 0, 0},
};

/* `plan`: the disk the run will write, and what the cache's file system has. */
static int print_disk(dm_graph *g)
{
    dm_disk_estimate e;
    if (dm_run_disk_estimate(g, &e))
        return -1;
    char *t = dm_human_bytes(e.total), *sp = dm_human_bytes(e.spills), *te = dm_human_bytes(e.tensors),
         *pr = dm_human_bytes(e.products), *fr = dm_human_bytes(e.free);
    printf("disk: about %s into %s (spills %s, tensors %s, products %s%s); its file system has %s free%s\n", t,
           g->cache, sp, te, pr, g->out ? ", twice with --out" : "", fr,
           e.total > e.free ? ": not enough, `dmica run` will refuse to start" : "");
    if (e.unknown)
        printf("disk: %d spilled stream%s of rows not known before the run %s not counted\n", e.unknown,
               e.unknown == 1 ? "" : "s", e.unknown == 1 ? "is" : "are");
    free(t), free(sp), free(te), free(pr), free(fr);
    return 0;
}

/* The pipeline as it ran (templates expanded, --set applied) into the results
 * folder as pipeline.yaml, for what later reads the run again (dmica causal). */
static int save_pipeline(const dm_pipeline *p, const char *out)
{
    char *path = dm_xasprintf("%s/pipeline.yaml", out), *tmp = dm_xasprintf("%s/.pipeline.yaml.tmp", out);
    FILE *f = fopen(tmp, "w");
    int rc = 0;
    if (f)
        dm_pipeline_write(p, f);
    if (!f || ferror(f) | fclose(f) || rename(tmp, path))
        rc = dm_failc(DM_E_IO, "%s: %s", path, strerror(errno));
    if (rc)
        unlink(tmp);
    free(path), free(tmp);
    return rc;
}

/* Parses the options of run, plan or demo; returns as dm_args_parse does. */
static int parse_run_opts(const dm_arg_cmd *c, int argc, char **argv, dm_args *a, run_opts *o)
{
    int rc = dm_args_parse(c, argc, argv, a);
    if (rc)
        return rc;
    o->out = dm_arg_str(a, "out");
    o->cache = dm_arg_str(a, "cache");
    o->threads = (int)dm_arg_int(a, "threads");
    o->memory = dm_arg_int(a, "memory");
    o->quiet = dm_arg_flag(a, "quiet");
    o->device = dm_arg_str(a, "device");
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda") && strcmp(o->device, "auto")) {
        fprintf(stderr, "dmica %s: --device: expected cpu, cuda or auto, not '%s'\n", c->name, o->device);
        return 2;
    }
    if (dm_compute_set_gemm(dm_arg_str(a, "precision"))) {
        fprintf(stderr, "dmica %s: --precision: expected fp32, tf32 or bf16, not '%s'\n", c->name,
                dm_arg_str(a, "precision"));
        return 2;
    }
    o->shard = -1;
    if (dm_arg_str(a, "shard") && dm_parse_rows(dm_arg_str(a, "shard"), &o->shard)) {
        fprintf(stderr, "dmica %s: --shard: expected a number of rows (tokens), such as 1000000 or 1M, or 0; "
                "not '%s'\n", c->name, dm_arg_str(a, "shard"));
        return 2;
    }
    o->sets = dm_arg_list(a, "set", &o->nsets);
    o->force = dm_arg_list(a, "force", &o->nforce);
    o->pipeline = a->npos ? a->pos[0] : NULL;
    o->expanded = c->opts == plan_specs && dm_arg_flag(a, "expanded");
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
    dm_graph *g = dm_graph_build(p);
    if (!g) {
        dm_pipeline_free(p);
        return NULL;
    }
    g->cache = dm_cache_dir(o->cache, p->cache);
    g->out = o->out ? dm_xstrdup(o->out) : NULL;
    g->memory = o->memory ? o->memory : p->memory ? p->memory : (int64_t)1 << 30;
    if (o->shard >= 0)
        g->shard = o->shard;
    for (int i = 0; i < o->nforce; i++) {
        g->force = dm_xrealloc(g->force, (size_t)(g->nforce + 1) * sizeof *g->force);
        g->force[g->nforce++] = dm_xstrdup(o->force[i]);
    }
    /* More threads than a few per core only share the cores, and per-thread state
     * (accumulators, scratch) multiplies the memory a node needs: refuse it by name
     * rather than as a budget too small. */
    int threads = o->threads ? o->threads : p->threads;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores > 0 && threads > 4 * cores) {
        if (o->threads)
            dm_failc(DM_E_USAGE, "--threads %d is more than 4 per core (this machine has %ld cores: at most %ld)",
                     threads, cores, 4 * cores);
        else
            dm_fail("%s: threads %d is more than 4 per core (this machine has %ld cores: at most %ld; --threads "
                    "overrides it)", p->path, threads, cores, 4 * cores);
        dm_graph_free(g);
        dm_pipeline_free(p);
        return NULL;
    }
    dm_compute_set_threads(threads);
    char note[600];
    dm_compute_set_device(o->device, note, (int)sizeof note);
    /* MPI ranks (dist.h): rank 0 speaks and writes the results for all */
    g->rank = dm_dist_rank();
    g->nranks = dm_dist_size();
    if (g->rank != 0)
        o->quiet = 1;
    dm_progress_enabled = !o->quiet;
    if (note[0] && !o->quiet)
        fprintf(stderr, "dmica: %s\n", note);
    *pout = p;
    return g;
}

static int cmd_run_like(int argc, char **argv, const dm_arg_cmd *c, int plan_only, int demo)
{
    run_opts o = {0};
    o.demo = demo;
    dm_args a;
    int rc = parse_run_opts(c, argc, argv, &a, &o);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    dm_pipeline *p = NULL;
    if (o.expanded) { /* the declarations as the engine sees them, before binding checks them */
        p = dm_pipeline_load(o.pipeline);
        for (int i = 0; p && i < o.nsets; i++)
            if (dm_pipeline_set(p, o.sets[i]))
                dm_pipeline_free(p), p = NULL;
        dm_args_free(&a);
        if (!p) {
            fprintf(stderr, "dmica: %s\n", dm_error());
            return dm_error_exit();
        }
        dm_pipeline_write(p, stdout);
        dm_pipeline_free(p);
        return 0;
    }
    dm_graph *g = setup(&o, &p);
    char *device = dm_xstrdup(o.device); /* o's strings are a's */
    dm_args_free(&a);
    if (!g) {
        fprintf(stderr, "dmica: %s\n", dm_error());
        free(device);
        return dm_error_exit();
    }
    double t0 = dm_now();
    if (plan_only)
        rc = dm_plan(g);
    else
        rc = dm_run(g);
    if (!rc && !plan_only && g->out && g->rank == 0) {
        /* what enters cache keys, for a rerun of the file to find this run's entries: the
         * shard size, and --device on the nodes that did not name their own */
        p->shard = g->shard;
        for (int i = 0; i < p->nnodes && strcmp(device, "cpu"); i++)
            if (!p->nodes[i].device)
                p->nodes[i].device = dm_xstrdup(device);
        rc = save_pipeline(p, g->out);
    }
    if (!rc && (plan_only ? g->rank == 0 : !o.quiet))
        dm_plan_print(g, plan_only ? stdout : stderr);
    if (!rc && plan_only && g->rank == 0)
        rc = print_disk(g);
    if (rc)
        fprintf(stderr, "dmica: %s\n", dm_error());
    else if (!plan_only && !o.quiet)
        fprintf(stderr, "dmica: done in %.1f s%s%s\n", dm_now() - t0, g->out ? ", results in " : "",
                g->out ? g->out : "");
    dm_graph_free(g);
    dm_pipeline_free(p);
    free(device);
    return rc ? dm_error_exit() : 0;
}

static const dm_arg_spec stats_specs[] = {
    {"in", DM_ARG_PATH, "X.npy", NULL, 1, 0, 0, 0, "2-D float32 or float16 matrix, one observation per row"},
    RUN_OPTIONS,
    {NULL},
};

static const dm_arg_cmd stats_cmd = {
    "stats", "--in X.npy --out DIR [options]",
    "One pass over X (2-D float32 or float16) writes DIR/stats.json (n, and per column mean, var,\n"
    "skew, excess_kurtosis: population moments), DIR/covariance.npy (float64 d x d, divided by n),\n"
    "DIR/pca.json (eigenvalues descending, explained_variance_ratio) and DIR/pca_components.npy\n"
    "(d x d, one component per row). It runs as a pipeline (npy -> moments, covariance -> pca).\n",
    stats_specs, NULL, 0, 0,
};

static int cmd_stats(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&stats_cmd, argc, argv, &a);
    if (!rc && !dm_arg_str(&a, "out"))
        rc = dm_args_usage_error(&a, "--out DIR is required");
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    char *q = dm_yaml_quote(dm_arg_str(&a, "in"));
    char *text = dm_xasprintf("name: stats\n"
                              "nodes:\n"
                              "  input: {op: npy, params: {path: %s}}\n"
                              "  moments: {op: moments, inputs: {x: input}}\n"
                              "  covariance: {op: covariance, inputs: {x: input}}\n"
                              "  pca: {op: pca, inputs: {covariance: covariance.covariance}}\n",
                              q);
    free(q);
    dm_run_opts ro = {dm_arg_str(&a, "out"), dm_arg_str(&a, "cache"), dm_arg_int(&a, "memory"),
                      (int)dm_arg_int(&a, "threads"), dm_arg_flag(&a, "quiet")};
    rc = dm_run_yaml("<dmica stats>", text, &ro);
    free(text);
    dm_args_free(&a);
    return rc;
}

static const char *ptype(dm_param_type t)
{
    static const char *names[] = {"int", "float", "string", "bool", "size", "path"};
    return (unsigned)t < 6 ? names[t] : "?";
}

static const dm_arg_cmd ops_cmd = {
    "ops", "", "Lists the operators a pipeline can use, with their ports and parameters.\n",
    (const dm_arg_spec[]){{NULL}}, NULL, 0, 0,
};

static int cmd_ops(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&ops_cmd, argc, argv, &a);
    dm_args_free(&a);
    if (rc)
        return rc == 1 ? 0 : rc;
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
    /* under mpirun (or srun), join the other ranks (dist.h); a plain start does nothing */
    if (dm_dist_init(&argc, &argv)) {
        fprintf(stderr, "dmica: %s\n", dm_error());
        return dm_error_exit();
    }
    atexit(dm_dist_finalize);
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
        return cmd_run_like(argc - 1, argv + 1, &run_cmds[0], 0, 0);
    if (!strcmp(cmd, "plan"))
        return cmd_run_like(argc - 1, argv + 1, &run_cmds[1], 1, 0);
    if (!strcmp(cmd, "demo"))
        return cmd_run_like(argc - 1, argv + 1, &run_cmds[2], 0, 1);
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } commands[] = {
        {"stats", cmd_stats},         {"ops", cmd_ops}, {"tokenize", dm_cmd_tokenize},
        {"activations", dm_cmd_activations}, {"sae", dm_cmd_sae}, {"ica", dm_cmd_ica},
        {"analyze", dm_cmd_analyze},  {"top", dm_cmd_top}, {"cache", dm_cmd_cache}, {"causal", dm_cmd_causal},
        {"export", dm_cmd_export},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "dmica: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
