/*
 * engine.h: the engine's private structures (not for operators; they use op.h).
 *
 * A pipeline file is read into dm_pipeline (declarations with line numbers), then
 * bound into a graph of dm_node (operators found, parameters resolved, ports
 * connected and shapes inferred). Planning computes every node's cache key and
 * state; running executes the stale part in groups (see run.c).
 */
#ifndef DM_ENGINE_H
#define DM_ENGINE_H

#include "fs.h"
#include "op.h"
#include <stdio.h>

typedef struct {
    char *key;
    char *value;
    int line;
} dm_kv;

typedef struct {
    char *name;
    int line;
    char *op;
    int op_line;
    dm_kv *params;
    int nparams;
    dm_kv *inputs; /* port -> "node" or "node.port" */
    int ninputs;
    char *spill;       /* auto | always | never | recompute */
    char *spill_dtype; /* f32 | f16 | bf16 */
    char *spill_codec; /* none | zstd */
    int spill_line;
    char *publish; /* prefix of its products in --out ("layer6/" makes a folder) */
    int publish_line;
    char *device; /* cpu | cuda | auto: where its kernels run (NULL: the run's --device) */
    int device_line;
    char *origin; /* made by a template: "TEMPLATE VAR=value, ..." (NULL: written as it is) */
} dm_node_decl;

typedef struct {
    char *path; /* file name for messages ("<embedded demo>" for the demo) */
    char *name;
    int64_t memory; /* bytes, 0 = default */
    char *cache;    /* cache folder, NULL = default */
    int threads;
    int64_t chunk; /* rows per chunk at most (`chunk:`), 0 = the engine's cap */
    int64_t shard; /* rows (tokens) per shard (`shard:`), 0 = unsharded, -1 = not given */
    dm_node_decl *nodes;
    int nnodes;
} dm_pipeline;

/* Reads a pipeline from YAML text. Errors carry "path:line: ...". */
dm_pipeline *dm_pipeline_parse(const char *path, const char *text, size_t len);
dm_pipeline *dm_pipeline_load(const char *path);
void dm_pipeline_free(dm_pipeline *p);
/* A number of rows: 1000000, 1M, 250k (decimal multiples); -1 if not one. */
int dm_parse_rows(const char *s, int64_t *out);
/* Applies "node.key=value" to a parameter. */
int dm_pipeline_set(dm_pipeline *p, const char *assignment);
/* Frees what a declaration holds (not d itself). */
void dm_node_decl_clear(dm_node_decl *d);

/* A template (template.c; docs/pipelines.md, "Templates"): nodes written once
 * with ${VAR} in their strings, made once for each row of values. */
typedef struct {
    char *name;
    int line;
    char **vars; /* variable names */
    int nvars;
    char **vals; /* row r's value of variable v: vals[r * nvars + v] */
    int nrows;
    dm_node_decl *nodes; /* as written, ${VAR} unreplaced */
    int nnodes;
} dm_template;

/* Appends t's nodes, once per row with every ${VAR} replaced, to p->nodes;
 * each keeps its template lines and says which row made it (decl->origin).
 * Fails with "path:line: template 'NAME': ..." on an unknown variable; checks
 * of the expanded names are the caller's (pipeline.c). */
int dm_template_expand(dm_pipeline *p, const dm_template *t);
void dm_template_free(dm_template *t);
/* Writes p, templates expanded and --set applied, as pipeline YAML that reads
 * back to the same declarations (dmica plan --expanded). */
void dm_pipeline_write(const dm_pipeline *p, FILE *f);

typedef enum { DM_STATE_CACHED = 0, DM_STATE_STALE } dm_state;

typedef struct {
    dm_node *src;
    int port;
} dm_edge;

struct dm_node {
    int index;
    void *graph; /* the dm_graph it belongs to */
    dm_node_decl *decl;
    const dm_op *op;
    const char *where; /* "file:line" */
    int nparams, nin, nout;
    char **pval;          /* resolved parameter text, per spec */
    dm_edge *in;          /* per input spec; src NULL if unconnected */
    const dm_port_spec *outs; /* output ports (n->op->outputs, or made by op->ports) */
    int own_outs;
    dm_port_desc *outdesc;
    dm_tensor *outtensor; /* per output: set by finish, or loaded from cache */
    /* consumers of each output, filled when binding */
    dm_edge **cons; /* cons[port][i]: (consumer node, consumer input port) */
    int *ncons;

    /* planning */
    char key[33];
    char *material; /* what the key hashes, one "name=value" per line */
    dm_state state;
    char *why;      /* reason when stale */
    int forced;     /* stale because of --force, on it or on an input */
    int run;        /* 1: executes this run (writes a cache entry) */
    int reproduce;  /* 1: cached source produced again to feed a rerun */
    int *spill;     /* per output: spilled in this run */
    uint64_t single_pass; /* bit k: multipass input k is read once this run (dm_input_single_pass) */
    int group;

    /* running */
    int opened;
    void *state_ptr;
    char *dir; /* temporary node folder */
    char **products;
    int nproducts;
    struct dm_spill_writer **writers; /* per output */
    struct dm_replay **readers; /* per input: random-access inputs */
    char *building; /* the entry being built in dir: NULL for key, else a shard's key */
    int64_t shard_rows, nshards; /* after merging shards: their size and count (node.json's segments) */
    dm_compute compute; /* its kernels' context: the run's, with its own device (dm_node_compute) */
    int64_t chunk_rows;
    int64_t rows_in;
    double seconds;    /* time in this node's own callbacks but open() */
    double open_seconds, finish_seconds; /* in open() (loading weights, say), and the part of seconds in finish() */
    double shard_seconds; /* the seconds of the shards this run computed, added to seconds at the merge */
    int in_consume;
    char *bad_param; /* a parameter the operator read without declaring it (a bug) */
};

/* The state of one dm_run (run.c). */
typedef struct dm_run_ctx dm_run_ctx;

typedef struct {
    dm_pipeline *pipe;
    dm_node **nodes; /* topological order */
    int nnodes;
    char *cache;
    char *out; /* output folder (NULL: none) */
    int64_t memory;
    char **force;
    int nforce;
    int ran; /* dm_run finished: the plan printout says what ran */
    /* The cache lives for this run only (a command's temporary cache): tensor
     * outputs that no node of this graph reads are not written to it. */
    int ephemeral;
    dm_run_ctx *run; /* while dm_run runs (NULL otherwise): its state */
    int64_t shard;   /* rows (tokens) per shard; 0: groups are not sharded */
    int rank, nranks; /* this process among the MPI ranks running the graph (0 of 1 without MPI) */
} dm_graph;

#define DM_DEFAULT_SHARD ((int64_t)1000000) /* rows (tokens) per shard unless `shard:` or --shard says */

/* Reading a cached stream back (replay.c): the spill of entry `key` (node.json
 * `entry`) named `port`, or the spills of its shards in order; all rows, or,
 * when rows >= 0, the rows at offsets [row0, row0 + rows) from its first row.
 * Fails with DM_E_CORRUPT or DM_E_IO naming the file. */
typedef struct dm_replay dm_replay;
dm_replay *dm_replay_open(const dm_graph *g, const char *key, const char *port, const json_t *entry, int64_t row0,
                          int64_t rows);
void dm_replay_close(dm_replay *r);
int dm_replay_next(dm_replay *r, dm_chunk *out); /* out->rows = 0 at the end */
int dm_replay_rewind(dm_replay *r);
int dm_replay_read_rows(dm_replay *r, int64_t row0, int64_t rows, void *out); /* by global row */
int64_t dm_replay_rows(const dm_replay *r);
int64_t dm_replay_row0(const dm_replay *r);
int64_t dm_replay_cols(const dm_replay *r);
dm_dtype dm_replay_dtype(const dm_replay *r);
int64_t dm_replay_max_chunk_rows(const dm_replay *r);
/* After a failed read of a stream kept in shards: the entry folder of the shard
 * that failed (the caller removes it, so that shard is computed again); NULL
 * otherwise. */
const char *dm_replay_failed_shard(const dm_replay *r);
/* A stream kept in shards (opened on all its rows): the number of shards, and
 * malloc'd arrays of each one's first row (an offset from the stream's first
 * row) and rows. 0 (and NULLs) for a stream in one spill. */
int dm_replay_segments(const dm_replay *r, int64_t **row0, int64_t **rows);

/* Binds a pipeline: operators, parameters, connections, cycle check, infer().
 * The graph borrows p. */
dm_graph *dm_graph_build(dm_pipeline *p);
void dm_graph_free(dm_graph *g);
dm_node *dm_graph_find(dm_graph *g, const char *name);
/* Call after every operator callback with what it returned: -1 with a
 * DM_E_INTERNAL error when the operator read a parameter it does not declare,
 * else rc. */
int dm_node_check_params(dm_node *n, int rc);

/* Computes keys and states against the cache (cache.c). */
int dm_plan(dm_graph *g);
void dm_plan_print(dm_graph *g, FILE *f);
/* The disk a run of the current plan will write (run.c): spilled streams
 * (rows known or bounded, times width, times the stored dtype's size; zstd can
 * only shrink them), tensors, product files the operators announce
 * (disk_bytes; twice with --out), and the free space of the cache's file system.
 * `unknown` counts spilled streams whose rows cannot be told before the run. */
typedef struct {
    int64_t spills, tensors, products, total, free;
    int unknown;
} dm_disk_estimate;
int dm_run_disk_estimate(dm_graph *g, dm_disk_estimate *e);
/* Runs what the plan says, publishing products to g->out (run.c).
 * Returns 0, or -1 on error. */
int dm_run(dm_graph *g);

/* The cache's layout (cache.c): every path under g->cache is made here. All
 * paths are malloc'd. */
/* The cache folder (malloc'd): given (--cache), else the pipeline's `cache:`,
 * else $DMICA_CACHE, else .dmica-cache. Either argument may be NULL. */
char *dm_cache_dir(const char *given, const char *pipeline);
char *dm_cache_entry(const dm_graph *g, const char *key);                       /* CACHE/<key> */
char *dm_cache_entry_file(const dm_graph *g, const char *key, const char *file); /* CACHE/<key>/<file> */
char *dm_cache_tensor_file(const char *entry_dir, const char *port); /* a tensor output in an entry */
/* An entry's node.json (what it holds), or NULL when there is none. */
json_t *dm_cache_entry_json(const dm_graph *g, const char *key);
int dm_cache_invalidate(const dm_graph *g, const char *key);
/* Creates CACHE/tmp, where nodes build their entries, and removes the
 * temporary folders of runs whose process is gone (dm_cache_clean_tmp). */
int dm_cache_prepare(const dm_graph *g);
/* The folder in which node n builds its entry (its dm_node_dir). */
char *dm_cache_tmp_dir(const dm_graph *g, const dm_node *n);
/* CACHE/tmp/<name>.<pid>.<start>.<suffix>: a temporary path owned by this
 * process, removed by dm_cache_clean_tmp once the process is gone. name must
 * be 32 characters without a dot (a key) for the sweep to recognise it. */
char *dm_cache_tmp_path(const char *cache, const char *name, const char *suffix);
/* Makes n's folder its cache entry: writes `entry` as its node.json, syncs it,
 * renames it to CACHE/<key> (n->dir is freed and cleared) and records the key's
 * material in CACHE/index for `plan` to say why a node is stale. A shard's
 * entry (n->building, a shard key) goes to CACHE/<shard key>, with no record. */
int dm_cache_commit(const dm_graph *g, dm_node *n, const json_t *entry);

/* The key of shard `index` (of shard_rows rows each) of the node whose key is key:
 * its own entry, CACHE/<shard key>/, holds the shard's partial results and spills. */
void dm_cache_shard_key(const char *key, int64_t shard_rows, int64_t index, char out[33]);

/* Records n's key material in CACHE/index (dm_cache_commit does it; MPI ranks
 * other than 0 do it for the entries rank 0 committed, once copied). */
int dm_cache_record(const dm_graph *g, const dm_node *n);
/* Records that node n runs in `count` shards of shard_rows rows (CACHE/index),
 * so that `plan` can say how many are cached. */
int dm_cache_note_shards(const dm_graph *g, const dm_node *n, int64_t shard_rows, int64_t count);

/* Checksums of an entry's files (cache.c): node.json's "files" records the size
 * and XXH3 of each tensor output and product. */
/* Adds dir/file's size and checksum to files (node.json's "files" object). */
int dm_cache_sum_record(const char *dir, const char *file, json_t *files);
/* The sum node.json `entry` records for `file` (path names it in errors);
 * -1 with DM_E_CORRUPT when there is none or it is malformed. */
int dm_cache_sum_recorded(const json_t *entry, const char *file, const char *path, dm_file_sum *out);
/* Reads entry_dir/file whole and checks it against its record in `entry`:
 * -1 with DM_E_CORRUPT naming the file (missing, no record, size or checksum). */
int dm_cache_check_file(const char *entry_dir, const json_t *entry, const char *file);
/* `dmica cache verify`: checks every entry of the cache folder (node.json,
 * tensors and products against their checksums, spills chunk by chunk) and
 * calls report for each problem (node NULL when node.json is unreadable;
 * `problem` is the message, naming the file). With remove, bad entries are
 * deleted. Returns the number of bad entries (*nchecked: of entries), or -1 on
 * error. */
typedef void (*dm_cache_report_fn)(void *arg, const char *key, const char *node, const char *file,
                                   const char *problem);
int dm_cache_verify(const char *cache, int remove, dm_cache_report_fn report, void *arg, int *nchecked);
/* Temporary folders, disk use and garbage collection (cache.c). A temporary
 * folder's name holds its process's pid and start time; these functions remove
 * one only when no live process has that pid with that start time. */
/* Removes the temporary folders in CACHE/tmp of processes that are gone. */
int dm_cache_clean_tmp(const char *cache);
/* Marks entry `key` as used now (its folder's mtime), the age `cache gc` reads. */
void dm_cache_touch(const dm_graph *g, const char *key);
/* `dmica cache du`: the cache's size, per pipeline and node (from CACHE/index),
 * entries no pipeline's last run uses, temporary folders, on f. */
int dm_cache_du(const char *cache, FILE *f);
typedef struct {
    double older_than; /* seconds; < 0: not given */
    int64_t max_size;  /* bytes; < 0: not given */
    int dry_run;
} dm_cache_gc_opts;
/* `dmica cache gc`: with neither older_than nor max_size, removes the entries
 * no index record names; else those not used for older_than seconds, and the
 * least recently used until the entries hold max_size bytes at most. Always
 * removes the temporary folders of processes that are gone. Says what it
 * removes (or would, with dry_run) on f. */
int dm_cache_gc(const char *cache, const dm_cache_gc_opts *o, FILE *f);

/* progress.c */
typedef struct dm_progress dm_progress;
dm_progress *dm_progress_start(const char *label, int64_t total_rows);
void dm_progress_update(dm_progress *p, int64_t rows, int64_t spilled_bytes);
/* Counts in `unit` (per_row of them per row: "tokens" of a stream of windows). */
void dm_progress_units(dm_progress *p, const char *unit, int64_t per_row);
/* A sharded group: shards done of total, shown beside the label. */
void dm_progress_shards(dm_progress *p, int64_t done, int64_t total);
/* Draws the final line (when `always`, or when the pass took a while). */
void dm_progress_end(dm_progress *p, int64_t rows, int64_t spilled_bytes, int always);
extern int dm_progress_enabled;


/* For commands that run a pipeline they write as YAML text: parse, bind, run
 * with these settings, print errors and a closing line on stderr. Returns the
 * process exit status (0, or dm_error_exit()). */
typedef struct {
    const char *out;   /* results folder (NULL: none) */
    const char *cache; /* NULL: the YAML's cache:, else $DMICA_CACHE, else .dmica-cache */
    int64_t memory;    /* 0: the YAML's memory:, else 1 GiB */
    int threads;       /* 0: all cores */
    int quiet;
} dm_run_opts;
int dm_run_yaml(const char *label, const char *yaml, const dm_run_opts *o);
/* Double-quoted YAML scalar of s (malloc'd). */
char *dm_yaml_quote(const char *s);

#endif
