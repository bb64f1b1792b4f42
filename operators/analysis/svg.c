/*
 * svg.c: the report's plots, written as plain SVG text (see svg.h). A plot is a
 * frame with ticks at "nice" steps (1, 2, 5 x 10^k), the series, reference
 * lines and a legend; numbers are formatted with %g so files stay small.
 */
#include "svg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dm.h"

typedef dm_strbuf buf;
#define add dm_strbuf_addf

/* Text content with &, < and > escaped. */
static void add_text(buf *b, const char *t)
{
    for (; t && *t; t++) {
        if (*t == '&')
            add(b, "&amp;");
        else if (*t == '<')
            add(b, "&lt;");
        else if (*t == '>')
            add(b, "&gt;");
        else
            add(b, "%c", *t);
    }
}

static double nice_step(double range, int target)
{
    double raw = range / target, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
}

typedef struct {
    int W, H, L, R, T, B; /* size and margins */
    double x0, x1, y0, y1;
} frame;

static double px(const frame *f, double x) { return f->L + (x - f->x0) / (f->x1 - f->x0) * (f->W - f->L - f->R); }
static double py(const frame *f, double y) { return f->H - f->B - (y - f->y0) / (f->y1 - f->y0) * (f->H - f->T - f->B); }

static void open_frame(buf *b, frame *f, const dm_svg_opts *o)
{
    f->W = o->width ? o->width : 640;
    f->H = o->height ? o->height : 320;
    f->L = 64, f->R = 16, f->T = 30, f->B = 44;
    if (f->x1 <= f->x0)
        f->x1 = f->x0 + 1;
    if (f->y1 <= f->y0)
        f->y1 = f->y0 + 1;
    add(b, "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" "
           "font-family=\"sans-serif\" font-size=\"11\" role=\"img\">\n", f->W, f->H, f->W, f->H);
    add(b, "<title>");
    add_text(b, o->title);
    add(b, "</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    add(b, "<text x=\"%d\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">", f->W / 2);
    add_text(b, o->title);
    add(b, "</text>\n");
    double xs = nice_step(f->x1 - f->x0, 8), ys = nice_step(f->y1 - f->y0, 5);
    for (double x = ceil(f->x0 / xs) * xs; x <= f->x1 + 1e-9 * xs; x += xs) {
        add(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>", px(f, x), f->T, px(f, x), f->H - f->B);
        add(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", px(f, x), f->H - f->B + 14,
            fabs(x) < 1e-12 * xs ? 0.0 : x);
    }
    for (double y = ceil(f->y0 / ys) * ys; y <= f->y1 + 1e-9 * ys; y += ys) {
        add(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>", f->L, py(f, y), f->W - f->R, py(f, y));
        add(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", f->L - 4, py(f, y) + 4,
            fabs(y) < 1e-12 * ys ? 0.0 : y);
    }
    add(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n", f->L, f->T,
        f->W - f->L - f->R, f->H - f->T - f->B);
    add(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (f->L + f->W - f->R) / 2, f->H - 8);
    add_text(b, o->xlabel);
    add(b, "</text>\n<text transform=\"translate(14 %d) rotate(-90)\" text-anchor=\"middle\">", (f->T + f->H - f->B) / 2);
    add_text(b, o->ylabel);
    add(b, "</text>\n");
}

static void close_frame(buf *b, const frame *f, const dm_svg_series *s, int ns, const dm_svg_opts *o)
{
    for (int i = 0; i < o->nmarks; i++) {
        const dm_svg_mark *m = &o->marks[i];
        if (m->vertical && m->at >= f->x0 && m->at <= f->x1)
            add(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#d62728\" stroke-dasharray=\"5 3\" "
                   "stroke-width=\"1.5\"/>\n", px(f, m->at), f->T, px(f, m->at), f->H - f->B);
        else if (!m->vertical && m->at >= f->y0 && m->at <= f->y1)
            add(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#d62728\" stroke-dasharray=\"5 3\" "
                   "stroke-width=\"1.5\"/>\n", f->L, py(f, m->at), f->W - f->R, py(f, m->at));
    }
    /* legend: series, then marks */
    int row = 0;
    for (int i = 0; i < ns; i++, row++) {
        if (!s[i].label)
            continue;
        add(b, "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"%s\" fill-opacity=\"0.6\"/>"
               "<text x=\"%d\" y=\"%d\">", f->W - f->R - 170, f->T + 8 + row * 15, s[i].color, f->W - f->R - 155,
            f->T + 17 + row * 15);
        add_text(b, s[i].label);
        add(b, "</text>\n");
    }
    for (int i = 0; i < o->nmarks; i++, row++) {
        if (!o->marks[i].label)
            continue;
        add(b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#d62728\" stroke-dasharray=\"5 3\"/>"
               "<text x=\"%d\" y=\"%d\">", f->W - f->R - 170, f->T + 13 + row * 15, f->W - f->R - 160,
            f->T + 13 + row * 15, f->W - f->R - 155, f->T + 17 + row * 15);
        add_text(b, o->marks[i].label);
        add(b, "</text>\n");
    }
    add(b, "</svg>\n");
}

char *dm_svg_bars(const double *counts, int nbins, double lo, double hi, const dm_svg_opts *o)
{
    buf b = {0};
    frame f = {0};
    double ymax = 0;
    for (int i = 0; i < nbins; i++)
        ymax = counts[i] > ymax ? counts[i] : ymax;
    f.x0 = lo, f.x1 = hi, f.y0 = 0, f.y1 = ymax > 0 ? ymax * 1.05 : 1;
    open_frame(&b, &f, o);
    double w = (hi - lo) / nbins;
    for (int i = 0; i < nbins; i++)
        if (counts[i] > 0)
            add(&b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#1f77b4\" fill-opacity=\"0.7\"/>\n",
                px(&f, lo + i * w), py(&f, counts[i]), px(&f, lo + (i + 1) * w) - px(&f, lo + i * w),
                py(&f, 0) - py(&f, counts[i]));
    close_frame(&b, &f, NULL, 0, o);
    return b.s;
}

char *dm_svg_histogram(const dm_svg_series *s, int ns, const dm_svg_opts *o)
{
    int bins = o->bins > 0 ? o->bins : 40;
    double lo = o->lo, hi = o->hi;
    if (!(hi > lo)) {
        lo = INFINITY, hi = -INFINITY;
        for (int k = 0; k < ns; k++)
            for (size_t i = 0; i < s[k].n; i++)
                if (isfinite(s[k].x[i]))
                    lo = fmin(lo, s[k].x[i]), hi = fmax(hi, s[k].x[i]);
        for (int i = 0; i < o->nmarks; i++)
            if (o->marks[i].vertical)
                lo = fmin(lo, o->marks[i].at), hi = fmax(hi, o->marks[i].at);
        if (!isfinite(lo))
            lo = 0, hi = 1;
        if (hi - lo < 1e-12)
            lo -= 0.5, hi += 0.5;
        double pad = (hi - lo) * 0.02;
        lo -= pad, hi += pad;
    }
    double w = (hi - lo) / bins, ymax = 0;
    double *h = dm_xcalloc((size_t)(ns * bins), sizeof *h);
    for (int k = 0; k < ns; k++) {
        size_t cnt = 0;
        for (size_t i = 0; i < s[k].n; i++) {
            double x = s[k].x[i];
            if (!isfinite(x) || x < lo || x > hi)
                continue;
            int bi = (int)((x - lo) / w);
            h[k * bins + (bi >= bins ? bins - 1 : bi)]++;
            cnt++;
        }
        for (int i = 0; i < bins; i++) {
            if (o->density && cnt)
                h[k * bins + i] /= (double)cnt * w;
            ymax = fmax(ymax, h[k * bins + i]);
        }
    }
    buf b = {0};
    frame f = {0};
    f.x0 = lo, f.x1 = hi, f.y0 = 0, f.y1 = ymax > 0 ? ymax * 1.05 : 1;
    open_frame(&b, &f, o);
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < bins; i++)
            if (h[k * bins + i] > 0)
                add(&b, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" "
                        "fill-opacity=\"%s\"/>\n", px(&f, lo + i * w), py(&f, h[k * bins + i]),
                    px(&f, lo + (i + 1) * w) - px(&f, lo + i * w), py(&f, 0) - py(&f, h[k * bins + i]),
                    s[k].color, ns > 1 ? "0.45" : "0.75");
    free(h);
    close_frame(&b, &f, s, ns, o);
    return b.s;
}

char *dm_svg_line(const dm_svg_series *s, int ns, const dm_svg_opts *o)
{
    buf b = {0};
    frame f = {0};
    size_t nmax = 1;
    double ymin = INFINITY, ymax = -INFINITY;
    for (int k = 0; k < ns; k++) {
        nmax = s[k].n > nmax ? s[k].n : nmax;
        for (size_t i = 0; i < s[k].n; i++)
            if (isfinite(s[k].x[i]))
                ymin = fmin(ymin, s[k].x[i]), ymax = fmax(ymax, s[k].x[i]);
    }
    for (int i = 0; i < o->nmarks; i++)
        if (!o->marks[i].vertical)
            ymin = fmin(ymin, o->marks[i].at), ymax = fmax(ymax, o->marks[i].at);
    if (!isfinite(ymin))
        ymin = 0, ymax = 1;
    f.x0 = 1, f.x1 = (double)nmax, f.y0 = fmin(0, ymin), f.y1 = ymax + (ymax - fmin(0, ymin)) * 0.05;
    open_frame(&b, &f, o);
    for (int k = 0; k < ns; k++) {
        add(&b, "<polyline class=\"line\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" points=\"", s[k].color);
        for (size_t i = 0; i < s[k].n; i++)
            if (isfinite(s[k].x[i]))
                add(&b, "%.1f,%.1f ", px(&f, (double)(i + 1)), py(&f, s[k].x[i]));
        add(&b, "\"/>\n");
    }
    close_frame(&b, &f, s, ns, o);
    return b.s;
}
