/*
 * progress.c: progress of long passes on stderr. On a terminal, a bar redrawn
 * in place (rows, rows/s, ETA, MB spilled) at most ten times a second;
 * otherwise (logs, CI) a plain line every five seconds and one at the end.
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int dm_progress_enabled = 1;

struct dm_progress {
    char *label;
    int64_t total;
    const char *unit; /* "rows", or "tokens" for a stream of token windows */
    int64_t per_row;  /* units per row */
    int64_t shards_done, shards_total; /* shards_total 0: not sharded */
    double t0, last;
    int tty;
};

dm_progress *dm_progress_start(const char *label, int64_t total_rows)
{
    dm_progress *p = dm_xcalloc(1, sizeof *p);
    p->label = dm_xstrdup(label);
    p->total = total_rows;
    p->unit = "rows";
    p->per_row = 1;
    p->t0 = p->last = dm_now();
    p->tty = isatty(2);
    return p;
}

static void fmt_eta(char *buf, size_t n, double s)
{
    if (s < 0 || s > 1e7)
        snprintf(buf, n, "--:--");
    else if (s >= 3600)
        snprintf(buf, n, "%d:%02d:%02d", (int)s / 3600, ((int)s / 60) % 60, (int)s % 60);
    else
        snprintf(buf, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

void dm_progress_units(dm_progress *p, const char *unit, int64_t per_row)
{
    p->unit = unit;
    p->per_row = per_row > 0 ? per_row : 1;
}

void dm_progress_shards(dm_progress *p, int64_t done, int64_t total)
{
    p->shards_done = done;
    p->shards_total = total;
}

static void draw(dm_progress *p, int64_t rows, int64_t spilled, int final)
{
    char label[600];
    if (p->shards_total > 0)
        snprintf(label, sizeof label, "%s, shard %lld/%lld", p->label, (long long)p->shards_done,
                 (long long)p->shards_total);
    else
        snprintf(label, sizeof label, "%s", p->label);
    const char *u = p->unit;
    rows *= p->per_row;
    int64_t total = p->total > 0 ? p->total * p->per_row : p->total;
    double el = dm_now() - p->t0, rate = el > 0 ? (double)rows / el : 0;
    char eta[32];
    fmt_eta(eta, sizeof eta, total > 0 && rate > 0 ? (double)(total - rows) / rate : -1);
    double mb = (double)spilled / 1e6;
    if (p->tty) {
        int width = 24, fill = total > 0 ? (int)((double)width * (double)rows / (double)total) : 0;
        char bar[32];
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        if (total > 0)
            fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s %.3g %s/s ETA %s %.0f MB spilled", label, bar,
                    (long long)rows, (long long)total, u, rate, u, final ? "00:00" : eta, mb);
        else
            fprintf(stderr, "\r\033[K%s %lld %s %.3g %s/s %.0f MB spilled", label, (long long)rows, u, rate, u, mb);
        if (final)
            fprintf(stderr, " (%.1f s)\n", el);
    } else {
        if (final)
            fprintf(stderr, "dmica: %s: %lld %s in %.1f s (%.3g %s/s), %.0f MB spilled\n", label,
                    (long long)rows, u, el, rate, u, mb);
        else if (total > 0)
            fprintf(stderr, "dmica: %s: %lld/%lld %s, %.3g %s/s, ETA %s, %.0f MB spilled\n", label,
                    (long long)rows, (long long)total, u, rate, u, eta, mb);
        else
            fprintf(stderr, "dmica: %s: %lld %s, %.3g %s/s, %.0f MB spilled\n", label, (long long)rows, u,
                    rate, u, mb);
    }
    fflush(stderr);
}

void dm_progress_update(dm_progress *p, int64_t rows, int64_t spilled_bytes)
{
    if (!dm_progress_enabled)
        return;
    double now = dm_now();
    if (now - p->last < (p->tty ? 0.1 : 5.0))
        return;
    p->last = now;
    draw(p, rows, spilled_bytes, 0);
}

void dm_progress_end(dm_progress *p, int64_t rows, int64_t spilled_bytes, int always)
{
    /* repeated passes (an iterative fit's) only say something when they take a while */
    if (dm_progress_enabled && dm_verbose > 0 && (always || dm_now() - p->t0 >= 2.0))
        draw(p, rows, spilled_bytes, 1);
    free(p->label);
    free(p);
}
