/*
 * lbfgs.c: L-BFGS with a strong-Wolfe line search, driven by the caller's
 * evaluations (lbfgs.h says how and cites the algorithms).
 *
 * The line search is a state machine over the tells: phase 1 brackets (step
 * doubles while f decreases enough and the slope stays negative and steep),
 * phase 2 zooms into the bracket [lo, hi] where lo is always the best point
 * with sufficient decrease seen so far. Its gradient is kept (glo), so a
 * search that runs out of evaluations can still accept lo when lo > 0.
 */
#include "lbfgs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dm.h"

static double dot(const double *a, const double *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

void dm_lbfgs_init(dm_lbfgs *o, int64_t n, int m, const double *x0)
{
    memset(o, 0, sizeof *o);
    o->n = n;
    o->m = m < 1 ? 1 : m;
    size_t b = (size_t)n * sizeof(double);
    o->x = dm_xmalloc(b), o->g = dm_xcalloc((size_t)n, sizeof(double));
    o->xt = dm_xmalloc(b), o->d = dm_xcalloc((size_t)n, sizeof(double)), o->glo = dm_xmalloc(b);
    o->s = dm_xmalloc(b * (size_t)o->m), o->y = dm_xmalloc(b * (size_t)o->m);
    o->rho = dm_xmalloc((size_t)o->m * sizeof(double)), o->alpha = dm_xmalloc((size_t)o->m * sizeof(double));
    memcpy(o->x, x0, b);
    memcpy(o->xt, x0, b);
    o->f = INFINITY;
    o->max_ls = 20;
    o->c1 = 1e-4, o->c2 = 0.9;
}

void dm_lbfgs_free(dm_lbfgs *o)
{
    if (!o)
        return;
    free(o->x), free(o->g), free(o->xt), free(o->d), free(o->glo);
    free(o->s), free(o->y), free(o->rho), free(o->alpha);
    memset(o, 0, sizeof *o);
}

/* d = -H g by the two-loop recursion (Nocedal and Wright, Algorithm 7.4). */
static void direction(dm_lbfgs *o)
{
    int64_t n = o->n;
    double *q = o->d;
    for (int64_t i = 0; i < n; i++)
        q[i] = -o->g[i];
    for (int c = 0; c < o->count; c++) {
        int j = (o->head - 1 - c + o->m) % o->m;
        const double *s = o->s + (size_t)j * (size_t)n, *y = o->y + (size_t)j * (size_t)n;
        double a = o->rho[j] * dot(s, q, n);
        o->alpha[j] = a;
        for (int64_t i = 0; i < n; i++)
            q[i] -= a * y[i];
    }
    if (o->count) {
        int j = (o->head - 1 + o->m) % o->m;
        const double *y = o->y + (size_t)j * (size_t)n;
        double gamma = 1.0 / (o->rho[j] * dot(y, y, n)); /* s.y / y.y, eq. 7.20 */
        for (int64_t i = 0; i < n; i++)
            q[i] *= gamma;
    }
    for (int c = o->count - 1; c >= 0; c--) {
        int j = (o->head - 1 - c + o->m) % o->m;
        const double *s = o->s + (size_t)j * (size_t)n, *y = o->y + (size_t)j * (size_t)n;
        double b = o->rho[j] * dot(y, q, n);
        for (int64_t i = 0; i < n; i++)
            q[i] += (o->alpha[j] - b) * s[i];
    }
}

static void set_trial(dm_lbfgs *o, double step)
{
    o->step = step;
    for (int64_t i = 0; i < o->n; i++)
        o->xt[i] = o->x[i] + step * o->d[i];
}

/* Starts a search from x along a new direction; -1 when g is 0 or not a
 * descent direction even along -g (x is then stationary). */
static int start_search(dm_lbfgs *o)
{
    direction(o);
    double d0 = dot(o->g, o->d, o->n);
    if (!(d0 < 0)) { /* the memory gave an ascent direction: forget it */
        o->count = 0;
        direction(o);
        d0 = dot(o->g, o->d, o->n);
        if (!(d0 < 0))
            return -1;
    }
    o->f0 = o->f, o->d0 = d0;
    o->slo = 0, o->flo = o->f, o->dlo = d0;
    memcpy(o->glo, o->g, (size_t)o->n * sizeof(double));
    o->phase = 1, o->tries = 0;
    double step = 1.0;
    if (o->count == 0) {
        double gn = sqrt(dot(o->g, o->g, o->n));
        step = gn > 0 ? fmin(1.0, 1.0 / gn) : 1.0;
    }
    set_trial(o, step);
    return 0;
}

/* x <- x + step d with f and g there: stores the pair, starts the next search. */
static int accept(dm_lbfgs *o, double step, double f, const double *g)
{
    int64_t n = o->n;
    double *s = o->s + (size_t)o->head * (size_t)n, *y = o->y + (size_t)o->head * (size_t)n;
    for (int64_t i = 0; i < n; i++) {
        s[i] = step * o->d[i];
        y[i] = g[i] - o->g[i];
    }
    double sy = dot(s, y, n), ss = dot(s, s, n);
    if (sy > 1e-10 * ss && isfinite(sy)) {
        o->rho[o->head] = 1.0 / sy;
        o->head = (o->head + 1) % o->m;
        if (o->count < o->m)
            o->count++;
    }
    for (int64_t i = 0; i < n; i++)
        o->x[i] += step * o->d[i];
    memmove(o->g, g, (size_t)n * sizeof(double));
    o->f = f;
    o->iterations++;
    o->restarted = 0;
    if (start_search(o)) {
        /* stationary: nothing more to try, but report the accepted iterate first */
        memcpy(o->xt, o->x, (size_t)n * sizeof(double));
        o->phase = 3;
    }
    return DM_LBFGS_ITER;
}

/* The search failed: accept its best point, else restart along -g once. */
static int give_up(dm_lbfgs *o)
{
    if (o->slo > 0 && o->flo < o->f0)
        return accept(o, o->slo, o->flo, o->glo);
    if (o->restarted || o->count == 0)
        return DM_LBFGS_STUCK;
    o->count = 0;
    if (start_search(o))
        return DM_LBFGS_STUCK;
    o->restarted = 1;
    return DM_LBFGS_EVAL;
}

/* A trial step in (lo, hi) by cubic interpolation of f and its slope at both
 * ends (Nocedal and Wright eq. 3.59), kept at least 10% of the width from
 * either end; bisection where the cubic has no minimiser. */
static double zoom_step(const dm_lbfgs *o)
{
    double a = o->slo, b = o->shi, w = b - a;
    double d1 = o->dlo + o->dhi - 3.0 * (o->flo - o->fhi) / (a - b);
    double disc = d1 * d1 - o->dlo * o->dhi, t = NAN;
    if (disc >= 0 && isfinite(disc)) {
        double d2 = (b > a ? 1.0 : -1.0) * sqrt(disc);
        t = b - w * (o->dhi + d2 - d1) / (o->dhi - o->dlo + 2.0 * d2);
    }
    double lo = fmin(a, b) + 0.1 * fabs(w), hi = fmax(a, b) - 0.1 * fabs(w);
    if (!isfinite(t) || t < lo || t > hi)
        t = 0.5 * (a + b);
    return t;
}

static int finite_vec(const double *g, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(g[i]))
            return 0;
    return 1;
}

int dm_lbfgs_tell(dm_lbfgs *o, double f, const double *g)
{
    int64_t n = o->n;
    o->evaluations++;
    int ok = isfinite(f) && finite_vec(g, n);
    if (o->phase == 0) {
        if (!ok)
            return DM_LBFGS_STUCK;
        o->f = f;
        memcpy(o->g, g, (size_t)n * sizeof(double));
        if (start_search(o))
            return DM_LBFGS_STUCK;
        return DM_LBFGS_EVAL;
    }
    if (o->phase == 3)
        return DM_LBFGS_STUCK;
    o->tries++;
    double step = o->step, dphi = ok ? dot(g, o->d, n) : NAN;
    double armijo = o->f0 + o->c1 * step * o->d0;
    if (o->phase == 1) {
        if (!ok || f > armijo || (o->slo > 0 && f >= o->flo)) {
            o->shi = step, o->fhi = ok ? f : INFINITY, o->dhi = ok ? dphi : NAN;
            o->phase = 2;
        } else if (fabs(dphi) <= -o->c2 * o->d0) {
            return accept(o, step, f, g);
        } else if (dphi >= 0) {
            /* past the minimum: zoom between this point and the previous one */
            o->shi = o->slo, o->fhi = o->flo, o->dhi = o->dlo;
            o->slo = step, o->flo = f, o->dlo = dphi;
            memcpy(o->glo, g, (size_t)n * sizeof(double));
            o->phase = 2;
        } else {
            o->slo = step, o->flo = f, o->dlo = dphi;
            memcpy(o->glo, g, (size_t)n * sizeof(double));
            if (o->tries >= o->max_ls || step > 1e10)
                return give_up(o);
            set_trial(o, 2.0 * step);
            return DM_LBFGS_EVAL;
        }
    } else {
        if (!ok || f > armijo || f >= o->flo) {
            o->shi = step, o->fhi = ok ? f : INFINITY, o->dhi = ok ? dphi : NAN;
        } else {
            if (fabs(dphi) <= -o->c2 * o->d0)
                return accept(o, step, f, g);
            if (dphi * (o->shi - o->slo) >= 0)
                o->shi = o->slo, o->fhi = o->flo, o->dhi = o->dlo;
            o->slo = step, o->flo = f, o->dlo = dphi;
            memcpy(o->glo, g, (size_t)n * sizeof(double));
        }
    }
    /* zoom: a non-finite end has no usable cubic, so bisect towards lo */
    if (o->tries >= o->max_ls || fabs(o->shi - o->slo) <= 1e-12 * fmax(fabs(o->slo), fabs(o->shi)))
        return give_up(o);
    double t = isfinite(o->fhi) && isfinite(o->dhi) ? zoom_step(o) : 0.5 * (o->slo + o->shi);
    set_trial(o, t);
    return DM_LBFGS_EVAL;
}
