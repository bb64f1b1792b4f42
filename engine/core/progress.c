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
    double t0, last;
    int tty;
};

dm_progress *dm_progress_start(const char *label, int64_t total_rows)
{
    dm_progress *p = dm_xcalloc(1, sizeof *p);
    p->label = dm_xstrdup(label);
    p->total = total_rows;
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

static void draw(dm_progress *p, int64_t rows, int64_t spilled, int final)
{
    double el = dm_now() - p->t0, rate = el > 0 ? (double)rows / el : 0;
    char eta[32];
    fmt_eta(eta, sizeof eta, p->total > 0 && rate > 0 ? (double)(p->total - rows) / rate : -1);
    double mb = (double)spilled / 1e6;
    if (p->tty) {
        int width = 24, fill = p->total > 0 ? (int)((double)width * (double)rows / (double)p->total) : 0;
        char bar[32];
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        if (p->total > 0)
            fprintf(stderr, "\r\033[K%s [%s] %lld/%lld rows %.3g rows/s ETA %s %.0f MB spilled", p->label, bar,
                    (long long)rows, (long long)p->total, rate, final ? "00:00" : eta, mb);
        else
            fprintf(stderr, "\r\033[K%s %lld rows %.3g rows/s %.0f MB spilled", p->label, (long long)rows, rate, mb);
        if (final)
            fprintf(stderr, " (%.1f s)\n", el);
    } else {
        if (final)
            fprintf(stderr, "dmica: %s: %lld rows in %.1f s (%.3g rows/s), %.0f MB spilled\n", p->label,
                    (long long)rows, el, rate, mb);
        else if (p->total > 0)
            fprintf(stderr, "dmica: %s: %lld/%lld rows, %.3g rows/s, ETA %s, %.0f MB spilled\n", p->label,
                    (long long)rows, (long long)p->total, rate, eta, mb);
        else
            fprintf(stderr, "dmica: %s: %lld rows, %.3g rows/s, %.0f MB spilled\n", p->label, (long long)rows,
                    rate, mb);
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
