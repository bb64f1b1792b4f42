/*
 * svg.h: small, dependency-free SVG plots for the report (histograms with
 * reference lines, overlaid densities, line plots). Each function returns a
 * malloc'd, self-contained <svg> element; the caller frees it.
 */
#ifndef DM_SVG_H
#define DM_SVG_H

#include <stddef.h>

typedef struct {
    const double *x; /* values (histograms) or y values (line plots) */
    size_t n;
    const char *label;
    const char *color; /* CSS colour */
} dm_svg_series;

typedef struct {
    double at;
    const char *label;
    int vertical; /* 1: x = at, 0: y = at */
} dm_svg_mark;

typedef struct {
    const char *title, *xlabel, *ylabel;
    int width, height; /* pixels; 0 = 640 x 320 */
    int bins;          /* histograms; 0 = 40 */
    int density;       /* histograms: normalise each series to unit area */
    double lo, hi;     /* histogram range; lo == hi: from the data */
    const dm_svg_mark *marks;
    int nmarks;
} dm_svg_opts;

/* Histograms of one or more series on shared bins (NaN values skipped). */
char *dm_svg_histogram(const dm_svg_series *s, int ns, const dm_svg_opts *o);
/* Line plot of y[i] against i + 1. */
char *dm_svg_line(const dm_svg_series *s, int ns, const dm_svg_opts *o);
/* Bars of precomputed counts over [lo, hi] (counts[nbins]). */
char *dm_svg_bars(const double *counts, int nbins, double lo, double hi, const dm_svg_opts *o);

#endif
