/*
 * lbfgs.h: limited-memory BFGS in reverse communication, for objectives whose
 * every evaluation is a pass over data the optimiser never sees.
 *
 * The caller owns the evaluations: the optimiser names a point (o->xt), the
 * caller computes f and its gradient there (in memory, or over a streamed pass
 * merged across chunks, shards and ranks) and hands them back with
 * dm_lbfgs_tell(), which answers what to do next. One evaluation gives f and
 * g together, so every trial point of the line search costs one pass.
 *
 *   dm_lbfgs o;
 *   dm_lbfgs_init(&o, n, 10, x0);
 *   for (int st = DM_LBFGS_EVAL;;) {
 *       f = objective(o.xt, g);            (one pass)
 *       st = dm_lbfgs_tell(&o, f, g);
 *       if (st == DM_LBFGS_ITER && converged(o.f, o.g)) break;   (o.x is the iterate)
 *       if (st == DM_LBFGS_STUCK) break;                          (o.x is the best iterate)
 *   }
 *   dm_lbfgs_free(&o);
 *
 * Directions: the two-loop recursion over the last m pairs s = x_{i+1} - x_i,
 * y = g_{i+1} - g_i, with H0 = (s.y / y.y) I (Nocedal and Wright, Numerical
 * Optimization, 2nd ed., Algorithm 7.4 and eq. 7.20). Steps: a line search
 * for the strong Wolfe conditions f(x + a d) <= f + c1 a g.d and
 * |g(x + a d).d| <= c2 |g.d|, c1 = 1e-4, c2 = 0.9, by bracketing and zoom
 * (ibid., Algorithms 3.5 and 3.6) with a safeguarded cubic interpolation
 * (ibid., eq. 3.59). The first step of a search is 1 (after the first
 * iteration), else 1 / ||g||. A pair with s.y <= 1e-10 s.s is dropped. When a
 * search fails (no acceptable point in max_ls evaluations) the memory is
 * cleared and the search repeated along -g; a second failure is STUCK.
 */
#ifndef DM_LBFGS_H
#define DM_LBFGS_H

#include <stdint.h>

enum {
    DM_LBFGS_EVAL = 1,  /* evaluate f and g at xt and tell */
    DM_LBFGS_ITER = 2,  /* an iteration was accepted (x, f, g); xt holds the next trial point */
    DM_LBFGS_STUCK = 3, /* no step lowers f along the direction: x, f, g are the best iterate */
};

typedef struct {
    int64_t n;    /* variables */
    int m;        /* pairs kept */
    double *x;    /* (n) the current iterate */
    double *g;    /* (n) its gradient */
    double f;     /* its value */
    double *xt;   /* (n) the point to evaluate next */
    double *d;    /* (n) the search direction */
    double *s, *y; /* (m, n) the pairs, a ring */
    double *rho, *alpha; /* (m) 1 / (s.y), the two-loop's scratch */
    int head, count;     /* the ring's next slot and its pairs */
    double *glo;  /* (n) gradient at the zoom's low end */
    double f0, d0;            /* f and g.d at step 0 of the search */
    double step;              /* the step of xt */
    double slo, flo, dlo;     /* the bracket's low end (the best point with sufficient decrease) */
    double shi, fhi, dhi;     /* its other end */
    int phase;                /* 0: first evaluation, 1: bracketing, 2: zoom */
    int tries;                /* evaluations in this search */
    int restarted;            /* this search already restarted along -g */
    int iterations;           /* accepted iterations */
    int evaluations;          /* tells */
    int max_ls;               /* evaluations per search at most (20) */
    double c1, c2;
} dm_lbfgs;

/* Sets up n variables, m pairs, from x0 (copied): the first request is to
 * evaluate at xt = x0. Release with dm_lbfgs_free (accepts a zeroed struct). */
void dm_lbfgs_init(dm_lbfgs *o, int64_t n, int m, const double *x0);
void dm_lbfgs_free(dm_lbfgs *o);

/* f and g (n) at o->xt. Returns DM_LBFGS_EVAL, DM_LBFGS_ITER or
 * DM_LBFGS_STUCK (above); a non-finite f or g at a trial point counts as a
 * point that does not decrease f (the step shrinks), at x0 it is STUCK. */
int dm_lbfgs_tell(dm_lbfgs *o, double f, const double *g);

#endif
