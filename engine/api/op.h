/*
 * op.h: the one interface every operator implements.
 *
 * An operator is a table of callbacks (dm_op) plus declarations of its parameters
 * and ports. The engine knows operators only through this table: it reads the
 * pipeline, checks parameters against dm_param_spec, asks infer() for the output
 * shapes, computes cache keys, and then drives the callbacks. operators/registry.c
 * lists the operators that exist.
 *
 * Ports are streams or tensors:
 *   - a stream is an unbounded sequence of rows, `cols` wide, of one dtype (f32
 *     unless its port says i32 or i64), moved in chunks (dm_chunk). Streaming operators receive chunks in consume() and may
 *     emit chunks on their stream outputs with dm_emit(): usually one output
 *     chunk per input chunk with the same row0 and rows (a map), none (a
 *     reduction), or rows of another indexing (gpt2 turns a chunk of windows of
 *     T tokens into chunks of token rows, row = window * T + position). An
 *     operator bounds its own output chunks; dm_chunk_rows() is a guide.
 *   - a tensor is a small dense array (a covariance, a whitening matrix) that an
 *     operator sets in finish() with dm_set_output(). Consumers read it with
 *     dm_input_tensor() from open() onwards: a tensor input is always complete
 *     before its consumer starts. A tensor that depends only on its node's
 *     parameters (an SAE's settings from its cfg.json, a generated dictionary)
 *     may be set already in infer(), so consumers see it from their own infer()
 *     on (op_sae_config.c); the node sets it again in finish() for the cache.
 *
 * Life of a node in one run:
 *   infer()            at validation, before any work; checks inputs, sets outputs
 *   open()             allocate state (the engine has checked the memory budget)
 *   produce()          sources: fill chunks until it returns 0
 *   consume()          others: one call per chunk per stream input; chunks of
 *                      several stream inputs arrive for the same rows in turn
 *   end_pass(pass)     after each full pass over the stream inputs; return 1 to
 *                      ask for another pass (the engine replays the inputs from
 *                      their spill files; the port must be declared multipass)
 *   finish()           set tensor outputs, write product files into dm_node_dir()
 *   close()            free state; always called once open() was, also on error
 * Every callback except close returns 0 on success or -1 with dm_fail().
 */
#ifndef DM_OP_H
#define DM_OP_H

#include "compute.h"
#include "dm.h"

#include <jansson.h>

typedef enum { DM_PORT_STREAM = 0, DM_PORT_TENSOR } dm_port_kind;

/* What flows through a port. For a stream, shape = {rows, cols} where rows is
 * -1 when not known before the run, and dtype is DM_F32, DM_I32 or DM_I64 (the
 * output port's declared dtype unless infer() sets another). */
typedef struct {
    dm_port_kind kind;
    dm_dtype dtype;
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    /* streams whose rows are not known before the run (shape[0] = -1): rows at
     * most, when a parameter bounds them (max_tokens), for the disk estimate; 0: no bound */
    int64_t max_rows;
} dm_port_desc;

typedef struct {
    const char *name;
    dm_port_kind kind;
    int multipass; /* input only: the operator may ask for several passes */
    int optional;  /* input only: may be left unconnected */
    int random;    /* input stream only: not pushed; read by row with
                      dm_input_read_rows() from its spill file (token windows
                      for contexts, say). Its producer runs in an earlier group. */
    dm_dtype dtype; /* streams: DM_F32 (0, the default), DM_I32 or DM_I64. An
                       output's is the dtype of its chunks (infer() may change
                       it); an input's is the one it takes, checked when binding */
    int any_dtype;  /* input stream only: takes any dtype (see dm_input_desc) */
} dm_port_spec;

typedef enum {
    DM_P_INT = 0, /* int64 */
    DM_P_FLOAT,   /* double */
    DM_P_STRING,
    DM_P_BOOL,    /* true/false/yes/no/1/0 */
    DM_P_SIZE,    /* bytes: "512M" */
    DM_P_PATH,    /* an input file: its content identity enters the cache key */
} dm_param_type;

typedef struct {
    const char *name;
    dm_param_type type;
    const char *def; /* default as text; NULL = required */
    const char *help;
} dm_param_spec;

typedef struct dm_node dm_node; /* owned by the engine */

typedef struct dm_op {
    const char *name;
    int version; /* bump when results change: it enters the cache key */
    const char *summary;
    const dm_param_spec *params;  /* terminated by {NULL} */
    const dm_port_spec *inputs;   /* terminated by {NULL} */
    const dm_port_spec *outputs;  /* terminated by {NULL} */
    /* Sources: 1 when producing again costs more than replaying a spill
     * (tokenizing a corpus), so `spill: auto` keeps their stream outputs. */
    int spill_source;

    /* Optional: output ports that depend on the parameters (one per requested
     * hook, say). Called once parameters are resolved; *outs is a NULL-name-
     * terminated array from dm_xmalloc with names from dm_xstrdup, which the
     * engine frees. Operators with fixed outputs leave it NULL and set outputs. */
    int (*ports)(dm_node *n, dm_port_spec **outs);
    int (*infer)(dm_node *n);
    /* Bytes of state the node will hold while running (for the memory budget). */
    int64_t (*state_bytes)(const dm_node *n);
    int (*open)(dm_node *n);
    /* Sources: fill out->data (or out->i32, out->i64: room for max_rows x cols
     * values of the output's dtype), set out->rows (0 at the end) and
     * out->row0. Return 0, or -1 on error. */
    int (*produce)(dm_node *n, dm_chunk *out, int64_t max_rows);
    int (*consume)(dm_node *n, int port, const dm_chunk *c);
    /* Return 1 to ask for another pass, 0 when done, -1 on error. */
    int (*end_pass)(dm_node *n, int pass);
    int (*finish)(dm_node *n);
    void (*close)(dm_node *n);

    /* Shards (run.c; docs/architecture.md, "Shards"). A group of nodes that
     * all set `shardable` runs once per shard of its rows: each member is
     * opened afresh, sees only that shard's chunks (row0 stays global), and
     * then save_partial() writes what finish() would need into the shard's
     * folder (its own cache entry). Once every shard is done (in this process
     * or in other MPI ranks) the node is opened once more, merge_partial() is
     * called for every shard in shard order, then finish(): so its results
     * depend on the shard size, never on how many processes ran the shards.
     * A map (gpt2, project) keeps nothing across rows and leaves both NULL.
     * dm_input_tensor() works in all three phases. */
    int shardable;
    int (*save_partial)(dm_node *n, const char *dir);
    int (*merge_partial)(dm_node *n, const char *dir);
    /* Sources that can produce any range of their rows (sharded groups they
     * drive): produce() then yields only the rows at offsets [row0, row0 +
     * rows) from the first row it makes (its chunks keep their own row0, which
     * a source cut by `shard`/`shards` parameters counts from its slice's start),
     * with the same values as in a full pass. Called after open(). */
    int (*seek)(dm_node *n, int64_t row0, int64_t rows);
    /* Multipass operators whose per-pass sums split by shard (FastICA): in a
     * run with shards, every pass reads the shards of its stream in turn
     * (spread over MPI ranks); after a shard, pass_partial() moves what the
     * pass accumulated for it into out (pass_partial_size() doubles) and
     * starts again from zero; before end_pass(), pass_merge() is called with
     * every shard's partial in shard order, so each pass ends with the same
     * sums in every process whatever the number of ranks. pass_partial_size()
     * returns 0 when the node does not split its passes this run (it keeps
     * its input in memory, say). */
    int64_t (*pass_partial_size)(const dm_node *n);
    int (*pass_partial)(dm_node *n, double *out);
    int (*pass_merge)(dm_node *n, const double *in);
    /* Optional: bytes of the product files the node writes for `rows` rows of
     * its first stream input (an .npy of every row), for the disk estimate. */
    int64_t (*disk_bytes)(const dm_node *n, int64_t rows);
} dm_op;

/* ---- what an operator may ask of its node ------------------------------- */

const char *dm_node_name(const dm_node *n);
const char *dm_node_where(const dm_node *n); /* "pipeline.yaml:12" for messages */

int64_t dm_param_int(const dm_node *n, const char *key);
double dm_param_float(const dm_node *n, const char *key);
const char *dm_param_str(const dm_node *n, const char *key); /* also SIZE and PATH */
int dm_param_bool(const dm_node *n, const char *key);
int64_t dm_param_size(const dm_node *n, const char *key);

/* Port descriptions: inputs as connected (NULL if an optional input is not),
 * outputs to be set by infer(). */
const dm_port_desc *dm_input_desc(const dm_node *n, int port);
dm_port_desc *dm_output_desc(dm_node *n, int port);
int dm_input_connected(const dm_node *n, int port);
/* From infer(): this run reads multipass input `port` only once (the operator
 * keeps its rows in memory), so the node may run in its producer's pass instead
 * of a group of its own that replays a spill; with its producer set to
 * `spill: never`, nothing is written to disk. end_pass() must then return 0. */
void dm_input_single_pass(dm_node *n, int port);

/* The tensor on an input port (from open() on). */
const dm_tensor *dm_input_tensor(const dm_node *n, int port);
/* Sets a tensor output; the node takes ownership of t's storage. */
int dm_set_output(dm_node *n, int port, dm_tensor *t);
/* Random-access inputs (dm_port_spec.random), from open() on: the number of
 * rows, and rows [row0, row0+rows) into out as values of the input's dtype. */
int64_t dm_input_rows(const dm_node *n, int port);
int dm_input_read_rows(dm_node *n, int port, int64_t row0, int64_t rows, void *out);
/* Pushes a chunk downstream on a stream output (and into its spill file); its
 * dtype must be the output's. */
int dm_emit(dm_node *n, int port, const dm_chunk *c);

/* A private folder for the node's product files. The engine moves it into the
 * cache when the node succeeds; files named with dm_publish() are then copied
 * to the run's output folder. */
const char *dm_node_dir(const dm_node *n);
int dm_publish(dm_node *n, const char *file);
/* Writes text as `file` in the node's folder (atomically) and publishes it;
 * does nothing when file is "" (the operator's "no product" setting). */
int dm_publish_text(dm_node *n, const char *file, const char *text, size_t len);
/* json_dumps(o, flags) with a final newline, published as `file` as dm_publish_text
 * does (nothing when file is ""); when text is given it gets the JSON (without
 * the newline) as a text tensor, the operators' summary outputs. o stays the
 * caller's. -1 with dm_fail() naming file (or what) if it cannot be encoded. */
int dm_publish_json(dm_node *n, const char *file, const char *what, const json_t *o, size_t flags,
                    dm_tensor *text);

/* The operator's own state pointer. */
void *dm_node_state(const dm_node *n);
void dm_node_set_state(dm_node *n, void *state);

/* The pipeline's stages finished before this node, as a malloc'd JSON array of
 * {"node", "op", "state": "ran"|"cached", "seconds"} (for a report). */
char *dm_stage_times(const dm_node *n);

/* Rows the engine moves per chunk in this run (from the memory budget). */
int64_t dm_chunk_rows(const dm_node *n);

/* The compute context of n's kernels (compute.h): the run's (--threads,
 * --device), with the node's own `device:` where it has one. Operators choose
 * their kernels' backend entries from it. */
const dm_compute *dm_node_compute(const dm_node *n);

/* The registry (operators/adapters/registry.c). */
const dm_op *const *dm_registry(void); /* NULL-terminated */
const dm_op *dm_find_op(const char *name);
/* Adds an operator (tests register mock operators this way); op must outlive
 * its use. -1 if an operator of that name exists. */
int dm_registry_add(const dm_op *op);

#endif
