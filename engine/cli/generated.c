/*
 * generated.c: commands that write named files (dmica sae --residual E.npy,
 * dmica activations --out ACTS.npy) run a pipeline like any other and then
 * hand its products over to the paths the user gave.
 *
 * The run publishes into a temporary results folder, and each wanted product is
 * moved (renamed) from there to the user's path, which costs no copy when both
 * are on one file system: the temporary folder and, by default, a temporary
 * cache are made beside the first wanted path for that reason. With a temporary
 * cache the published files are hard links into it (run.c), fine because the
 * cache is removed right after; with --cache the command reuses and keeps the
 * cache like `dmica run` does, and the published files are copies (reflinks
 * where the file system can), so the user's files never share bytes with it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "engine.h"
#include "fs.h"

/* The folder holding path ("." for a bare file name). */
static char *parent_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return dm_xstrdup(".");
    if (slash == path)
        return dm_xstrdup("/");
    return dm_xasprintf("%.*s", (int)(slash - path), path);
}

int dm_cli_run_to_files(const char *cmd, const char *yaml, const char *cache, int64_t memory, int threads,
                        int quiet, const dm_cli_product *want, int nwant)
{
    char *label = dm_xasprintf("<dmica %s>", cmd), *parent = parent_of(want[0].path);
    char *tmp = dm_xasprintf("%s/.dmica-%s.XXXXXX", parent, cmd), *out = NULL, *tcache = NULL;
    dm_pipeline *p = NULL;
    dm_graph *g = NULL;
    int rc = -1, placed = 0;
    free(parent);
    if (!mkdtemp(tmp)) {
        dm_failc(DM_E_IO, "cannot make a temporary folder %s: %s", tmp, strerror(errno));
        free(tmp);
        tmp = NULL;
        goto end;
    }
    out = dm_xasprintf("%s/out", tmp);
    tcache = dm_xasprintf("%s/cache", tmp);
    if (!(p = dm_pipeline_parse(label, yaml, strlen(yaml))) || !(g = dm_graph_build(p)))
        goto end;
    g->cache = dm_xstrdup(cache ? cache : tcache);
    g->ephemeral = !cache;
    g->out = dm_xstrdup(out);
    g->memory = memory > 0 ? memory : (int64_t)1 << 30;
    dm_compute_set_threads(threads);
    dm_progress_enabled = !quiet;
    /* A temporary cache is removed at the end: no fsync of what goes in it (the
     * products handed over are synced once they are in place, below). */
    dm_fs_set_durable(cache != NULL);
    rc = dm_run(g);
    dm_fs_set_durable(1);
    if (rc) {
        rc = -1;
        goto end;
    }
    rc = -1;
    for (int i = 0; i < nwant; i++) {
        if (!want[i].text)
            continue;
        char *src = dm_xasprintf("%s/%s", out, want[i].product);
        size_t len;
        *want[i].text = dm_read_file(src, &len);
        free(src);
        if (!*want[i].text)
            goto end;
    }
    for (placed = 0; placed < nwant; placed++) {
        if (!want[placed].path)
            continue;
        char *src = dm_xasprintf("%s/%s", out, want[placed].product);
        int bad = dm_move_file(src, want[placed].path) || dm_fsync_path(want[placed].path);
        free(src);
        if (bad)
            goto end;
    }
    rc = 0;
end:
    if (rc) {
        /* nothing half-delivered: take back what was placed (the message stays) */
        char *msg = dm_xstrdup(dm_error());
        dm_errc code = dm_error_code();
        for (int i = 0; i < placed && i < nwant; i++)
            if (want[i].path)
                unlink(want[i].path);
        if (tmp)
            dm_rm_rf(tmp);
        dm_failc(code, "%s", msg);
        fprintf(stderr, "dmica %s: %s\n", cmd, msg);
        free(msg);
    } else if (tmp && dm_rm_rf(tmp)) {
        dm_warn("%s: could not remove the temporary folder: %s", tmp, dm_error());
    }
    dm_graph_free(g);
    dm_pipeline_free(p);
    free(label), free(tmp), free(out), free(tcache);
    return rc ? 1 : 0;
}
