/*
 * sae.cu: the "cuda" entry of dm_sae_backend (operators/kernels/sae.h): the
 * SAE's forward and its statistics on the GPU.
 *
 * Device state. A work (dm_sae_work_new, one per loaded SAE) holds in its
 * device slot the SAE's weights, uploaded by its first forward (W_enc, W_dec,
 * b_enc, b_dec, and the thresholds: jumprelu's, zeros otherwise), and buffers
 * for `tile` rows (dm_sae_work_tile): x, the normalised input, the dense
 * activations f (tile x d_sae: the pre-activations, then f in place), recon
 * and residual. dm_sae_work_free releases them. A forward of more rows than
 * the tile runs in passes of the tile.
 *
 * forward, per pass:
 *   row_prep     a block per row: the finiteness test, the normalisation's sums
 *                in double (sae.c's row_norm, all four cases), x_in;
 *   encode       pre = x_in @ W_enc by cublasGemmEx in the context's
 *                precision (c->gemm: FP32 pedantic, TF32 or BF16 tensor cores,
 *                FP32 accumulation), then b_enc added in float as the CPU does;
 *   activation   standard and jumprelu elementwise (active: pre > 0, or
 *                pre > threshold, as sae.c's scan_threshold); topk a block per
 *                row: a radix select of the k-th largest value (four passes of
 *                8 bits over an order-preserving integer key), then the values
 *                above it and, of those equal to it, the lowest-numbered
 *                features, relu'd;
 *   actives      a block per row counts the non-zeros of f (-1 for a
 *                non-finite row); the host scans the counts into sp->start;
 *                a block per row writes its actives in increasing feature
 *                order (warp ballots give each one its slot);
 *   decode       recon = f @ W_dec (a dense GEMM: cheap beside the encode on
 *                a GPU), then b_dec, the denormalisation in double and
 *                e = x - recon in one elementwise kernel (NaN rows for
 *                non-finite x).
 * Then recon, the residual and the actives come back to the host.
 *
 * stats_update computes one block's aggregates on the GPU, from the rows its
 * last forward left there when the call's x, recon, residual and rows are
 * that forward's (else from an upload: the actives scattered into a dense f),
 * and the host merges them (dm_sae_stats_add_block) with the CPU's formulas:
 *   row_sums     a block per row: finiteness, sum e^2, the cosine of x and
 *                recon (double, shared-memory tree), L0; the host adds the
 *                per-row values in row order, as sae.c's token_sums does;
 *   moments      of x's and e's columns over the finite rows: the mean,
 *                then the centred powers, each in blocks of rows summed in
 *                double (common.cuh's gpu_column_pass, as gpu/stats.cu);
 *   co-moments   (predictability) x and e centred in double, the non-finite
 *                rows zeroed, then cublasDsyrk (cov x) and cublasDgemm
 *                (cov e, x): exact double sums where the "cpu" entry uses
 *                float blocks of 256 rows;
 *   feat_moments one thread per feature over the rows of f: count, mean,
 *                then the centred powers of the actives plus the zeros'
 *                (sae.c's stats_update_cpu, operation for operation, without
 *                fused multiply-adds: the same bits from the same f).
 * No atomics on floating point anywhere: every result is the same, bit for
 * bit, from run to run.
 *
 * GPU memory: the weights, 2 d_in d_sae + 2 d_sae + d_in floats, and per
 * tile row (3 d_in + d_sae) floats, its actives (8 bytes each), and with
 * predictability 2 d_in doubles; plus 2 d_in^2 + 8 d_in + 5 d_sae doubles.
 * GPT-2 small's layer-6 SAE (768 x 24576) with the operator's tile of 10922
 * rows (dm_sae_backend_tile: 1 GiB of activations): about 1.4 GB.
 *
 * On a CUDA error: one warning, and that call and every later one run on the
 * fallback ("cpu") entry with the same work, whose CPU buffers sae.c then
 * makes (cuda_abi.h, common.cuh).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

extern "C" {
#include "sae.h"
}

static dm_sae_backend fallback;
static gpu_family G = {"the SAE"};

#define THREADS 256 /* every kernel's block; the per-row kernels' reductions need a power of two */

static unsigned blocks(long n, int threads) { return gpu_blocks(n, threads); }

/* ---- kernels --------------------------------------------------------------------- */

/* The sum over a block of one value per thread, by a fixed tree (the same
 * order every run). Every thread of the block must call it. */
__device__ double block_sum(double v, double *red)
{
    red[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k /= 2) {
        if (threadIdx.x < k)
            red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    double s = red[0];
    __syncthreads();
    return s;
}

/* One block per row of x (rows, d): finite[r]; the normalisation of sae.c's
 * row_norm (coef[2r] = offset, coef[2r + 1] = the output multiplier); x_in =
 * (x - offset) * scale - b_dec (b_dec when apply), zeros for a non-finite row. */
__global__ void row_prep(const float *x, long d, int norm, double scaling_factor, int apply, const float *b_dec,
                         float *xin, double *coef, int *finite)
{
    __shared__ double red[THREADS];
    const float *xr = x + blockIdx.x * d;
    float *in = xin + blockIdx.x * d;
    int bad = 0;
    for (long j = threadIdx.x; j < d; j += blockDim.x)
        bad |= !isfinite(xr[j]);
    if (__syncthreads_or(bad)) {
        for (long j = threadIdx.x; j < d; j += blockDim.x)
            in[j] = 0.0f;
        if (threadIdx.x == 0)
            finite[blockIdx.x] = 0, coef[2 * blockIdx.x] = 0.0, coef[2 * blockIdx.x + 1] = 1.0;
        return;
    }
    double scale = 1.0, offset = 0.0, mul = 1.0;
    if (norm == DM_SAE_NORM_EXPECTED_AVERAGE) {
        scale = scaling_factor;
        mul = 1.0 / scaling_factor;
    } else if (norm == DM_SAE_NORM_CONSTANT) {
        double ss = 0.0;
        for (long j = threadIdx.x; j < d; j += blockDim.x)
            ss += (double)xr[j] * xr[j];
        ss = block_sum(ss, red);
        scale = ss > 0 ? sqrt((double)d) / sqrt(ss) : 1.0; /* a zero row is left as it is */
        mul = 1.0 / scale;
    } else if (norm == DM_SAE_NORM_LAYER) {
        double mu = 0.0, ss = 0.0;
        for (long j = threadIdx.x; j < d; j += blockDim.x)
            mu += xr[j];
        mu = block_sum(mu, red) / (double)d;
        for (long j = threadIdx.x; j < d; j += blockDim.x)
            ss += ((double)xr[j] - mu) * ((double)xr[j] - mu);
        ss = block_sum(ss, red);
        double sd = d > 1 ? sqrt(ss / (double)(d - 1)) : 0.0; /* torch.std: n - 1 */
        offset = mu;
        scale = 1.0 / (sd + 1e-5);
        mul = sd;
    }
    for (long j = threadIdx.x; j < d; j += blockDim.x)
        in[j] = (float)(((double)xr[j] - offset) * scale) - (apply ? b_dec[j] : 0.0f);
    if (threadIdx.x == 0)
        finite[blockIdx.x] = 1, coef[2 * blockIdx.x] = offset, coef[2 * blockIdx.x + 1] = mul;
}

/* pre (rows, ds) += b_enc, in float (the CPU's pre + b). */
__global__ void add_bias(float *pre, const float *b_enc, long rows, long ds)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < rows * ds)
        pre[i] += b_enc[i % ds];
}

/* Standard and jumprelu, in place: f = pre where pre > thr (0 for standard),
 * else 0; a non-finite row is all zeros. */
__global__ void act_threshold(float *f, const float *thr, const int *finite, long rows, long ds)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= rows * ds)
        return;
    float v = f[i];
    f[i] = finite[i / ds] && v > thr[i % ds] ? v : 0.0f;
}

/* A float's bits as an unsigned integer in the same order (larger float,
 * larger key). */
__device__ unsigned order_key(float v)
{
    unsigned u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* Among the lanes of a block's current tile whose flag is set, this thread's
 * rank (by position) and the tile's total; warp_tot is (THREADS / 32) shared
 * ints. Every thread of the block must call it. */
__device__ int tile_rank(int flag, int *warp_tot, int *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0)
        warp_tot[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, all = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) {
        before += w < warp ? warp_tot[w] : 0;
        all += warp_tot[w];
    }
    __syncthreads(); /* warp_tot is free for the next tile */
    *total = all;
    return before + __popc(ballot & ((1u << lane) - 1u));
}

/* Top k, one block per row of f (rows, ds), in place: the k largest
 * pre-activations, relu'd, zeros elsewhere. Ties at the k-th value go to the
 * lowest-numbered features (sae.c's heap keeps the earlier of equal values
 * too, in most orders of arrival). */
__global__ void act_topk(float *f, const int *finite, long ds, long k)
{
    __shared__ int hist[256];
    __shared__ unsigned s_prefix;
    __shared__ int s_need;
    __shared__ int warp_tot[THREADS / 32];
    float *row = f + blockIdx.x * ds;
    if (!finite[blockIdx.x] || k >= ds) {
        int keep = finite[blockIdx.x];
        for (long j = threadIdx.x; j < ds; j += blockDim.x)
            row[j] = keep && row[j] > 0.0f ? row[j] : 0.0f;
        return;
    }
    /* the k-th largest key, 8 bits at a time from the top: prefix holds the
     * bits found, need how many of the keys matching it are still wanted */
    unsigned prefix = 0, mask = 0;
    int need = (int)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x)
            hist[i] = 0;
        __syncthreads();
        for (long j = threadIdx.x; j < ds; j += blockDim.x) {
            unsigned key = order_key(row[j]);
            if ((key & mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int above = 0, b = 255;
            for (; b > 0 && above + hist[b] < need; b--)
                above += hist[b];
            s_prefix = prefix | ((unsigned)b << shift);
            s_need = need - above;
        }
        __syncthreads();
        prefix = s_prefix, need = s_need;
        mask |= 255u << shift;
        __syncthreads();
    }
    /* keys above prefix are in; of those equal to it, the first `need` */
    int taken = 0;
    for (long base = 0; base < ds; base += blockDim.x) {
        long j = base + threadIdx.x;
        float v = j < ds ? row[j] : 0.0f;
        unsigned key = j < ds ? order_key(v) : 0u;
        int eq = j < ds && key == prefix, total;
        int rank = tile_rank(eq, warp_tot, &total);
        int in = key > prefix || (eq && taken + rank < need);
        if (j < ds)
            row[j] = in && v > 0.0f ? v : 0.0f;
        taken += total;
    }
}

/* Actives (non-zeros of f) per row, -1 for a non-finite row. */
__global__ void count_actives(const float *f, const int *finite, long ds, int *count)
{
    const float *row = f + blockIdx.x * ds;
    int n = 0;
    for (long base = 0; base < ds; base += blockDim.x) {
        long j = base + threadIdx.x;
        n += __syncthreads_count(j < ds && row[j] != 0.0f);
    }
    if (threadIdx.x == 0)
        count[blockIdx.x] = finite[blockIdx.x] ? n : -1;
}

/* Each row's actives from start[r], in increasing feature order. */
__global__ void write_actives(const float *f, long ds, const long long *start, int32_t *feature, float *value)
{
    __shared__ int warp_tot[THREADS / 32];
    const float *row = f + blockIdx.x * ds;
    long long at = start[blockIdx.x];
    for (long base = 0; base < ds; base += blockDim.x) {
        long j = base + threadIdx.x;
        float v = j < ds ? row[j] : 0.0f;
        int total, rank = tile_rank(v != 0.0f, warp_tot, &total);
        if (v != 0.0f)
            feature[at + rank] = (int32_t)j, value[at + rank] = v;
        at += total;
    }
}

/* f (rows, ds) from the actives of each row (f zeroed before). */
__global__ void scatter_actives(float *f, long rows, long ds, const long long *start, const int32_t *feature,
                                const float *value)
{
    long r = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (r >= rows)
        return;
    for (long long a = start[r]; a < start[r + 1]; a++)
        f[r * ds + feature[a]] = value[a];
}

/* recon = denormalise(acc + b_dec), residual = x - recon, in place of acc
 * (rows, d); NaN rows where x is not finite. The denormalisation in double
 * without a fused multiply-add, as the CPU computes it. */
__global__ void finish_rows(float *recon, float *resid, const float *x, const float *b_dec, const double *coef,
                            const int *finite, long rows, long d)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= rows * d)
        return;
    long r = i / d;
    if (!finite[r]) {
        recon[i] = resid[i] = __int_as_float(0x7fc00000);
        return;
    }
    float y = recon[i] + b_dec[i % d];
    const double offset = coef[2 * r], mul = coef[2 * r + 1];
    if (mul != 1.0 || offset != 0.0)
        y = (float)__dadd_rn(__dmul_rn((double)y, mul), offset);
    recon[i] = y;
    resid[i] = x[i] - y;
}

/* One block per row: whether x's row is finite, and for a finite one sum e^2,
 * the cosine of x and recon (ok[r] = 1) or none (ok[r] = 0: a zero norm), and
 * L0, the non-zeros of f. ok[r] = -1 for a non-finite row. */
__global__ void row_sums(const float *x, const float *recon, const float *resid, const float *f, long d, long ds,
                         int *ok, double *e2, double *cosine, int *l0)
{
    __shared__ double red[THREADS];
    const long r = blockIdx.x;
    const float *xr = x + r * d, *hr = recon + r * d, *er = resid + r * d;
    int bad = 0;
    for (long j = threadIdx.x; j < d; j += blockDim.x)
        bad |= !isfinite(xr[j]);
    if (__syncthreads_or(bad)) {
        if (threadIdx.x == 0)
            ok[r] = -1, e2[r] = 0.0, cosine[r] = 0.0, l0[r] = 0;
        return;
    }
    double ee = 0.0, xx = 0.0, hh = 0.0, xh = 0.0;
    for (long j = threadIdx.x; j < d; j += blockDim.x) {
        ee += (double)er[j] * er[j];
        xx += (double)xr[j] * xr[j];
        hh += (double)hr[j] * hr[j];
        xh += (double)xr[j] * hr[j];
    }
    ee = block_sum(ee, red), xx = block_sum(xx, red), hh = block_sum(hh, red), xh = block_sum(xh, red);
    int n = 0;
    for (long base = 0; base < ds; base += blockDim.x)
        n += __syncthreads_count(base + threadIdx.x < ds && f[r * ds + base + threadIdx.x] != 0.0f);
    if (threadIdx.x == 0) {
        int defined = xx > 0 && hh > 0;
        ok[r] = defined, e2[r] = ee, cosine[r] = defined ? xh / sqrt(xx * hh) : 0.0, l0[r] = n;
    }
}

/* x (rows, d) less mean, in double; zero rows where ok < 0 (they add nothing
 * to the co-moments). */
__global__ void centre_rows(const float *x, long rows, long d, const double *mean, const int *ok, double *out)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < rows * d)
        out[i] = ok[i / d] >= 0 ? (double)x[i] - mean[i % d] : 0.0;
}

/* One thread per feature over f (rows, ds), nf finite rows (non-finite rows
 * have no actives): count, mean, and the centred power sums over all nf rows,
 * zeros included: sum over actives of (v - mean)^p plus (nf - count)(-mean)^p.
 * sae.c's stats_update_cpu's operations in its order (rows increasing), with
 * explicit roundings so that no multiply-add is fused. out (4, ds). */
__global__ void feat_moments(const float *f, long rows, long ds, long nf, double *out, long long *count)
{
    long k = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (k >= ds)
        return;
    double s = 0.0;
    long long c = 0;
    for (long i = 0; i < rows; i++) {
        float v = f[i * ds + k];
        if (v != 0.0f)
            s = __dadd_rn(s, (double)v), c++;
    }
    const double mean = __dmul_rn(s, 1.0 / (double)nf);
    double a2 = 0.0, a3 = 0.0, a4 = 0.0;
    for (long i = 0; i < rows; i++) {
        float v = f[i * ds + k];
        if (v == 0.0f)
            continue;
        double dv = __dsub_rn((double)v, mean), d2 = __dmul_rn(dv, dv);
        a2 = __dadd_rn(a2, d2);
        a3 = __dadd_rn(a3, __dmul_rn(d2, dv));
        a4 = __dadd_rn(a4, __dmul_rn(d2, d2));
    }
    const double z = (double)(nf - c), m = -mean, m2 = __dmul_rn(m, m);
    a2 = __dadd_rn(a2, __dmul_rn(z, m2));
    a3 = __dadd_rn(a3, __dmul_rn(__dmul_rn(z, m2), m));
    a4 = __dadd_rn(a4, __dmul_rn(__dmul_rn(z, m2), m2));
    out[k] = mean, out[ds + k] = a2, out[2 * ds + k] = a3, out[3 * ds + k] = a4;
    count[k] = c;
}

/* ---- the device state of a work ------------------------------------------------------ */

typedef struct {
    const dm_sae *s; /* whose weights are uploaded (NULL: none yet) */
    dm_gemm gemm;
    int64_t d_in, d_sae, tile;
    /* the SAE */
    float *W_enc, *W_dec, *b_enc, *b_dec, *thr;
    /* a pass of up to tile rows */
    float *x, *xin, *f, *recon, *resid; /* (tile, d_in), f (tile, d_sae) */
    double *coef;                       /* (tile, 2) */
    int *finite, *count;                /* (tile) */
    long long *start;                   /* (tile + 1) */
    int32_t *feature;                   /* (cap) actives */
    float *value;                       /* (cap) */
    int64_t cap;
    /* statistics */
    int *ok, *l0;      /* (tile) */
    double *rowsum;    /* (tile, 2): e^2, cosine */
    double *colmom;    /* (8, d_in) */
    double *featmom;   /* (4, d_sae) */
    long long *fcount; /* (d_sae) */
    double *xc, *ec;   /* (tile, d_in) centred, with predictability (made on first need) */
    double *C;         /* (2, d_in, d_in) co-moments of x, and of e with x */
    /* host scratch */
    int *h_count, *h_ok, *h_l0; /* (tile) */
    double *h_rowsum;           /* (tile, 2) */
    long long *h_start;         /* (tile + 1) */
    /* the last forward's host arrays (valid: one pass, and its rows are still here) */
    const float *last_x, *last_recon, *last_resid;
    int64_t last_rows;
    int valid;
} sae_gpu;

static void state_release(void *p)
{
    sae_gpu *g = (sae_gpu *)p;
    if (!g)
        return;
    void *dev[] = {g->W_enc, g->W_dec, g->b_enc, g->b_dec, g->thr, g->x, g->xin, g->f, g->recon,
                   g->resid, g->coef, g->finite, g->count, g->start, g->feature, g->value, g->ok,
                   g->l0, g->rowsum, g->colmom, g->featmom, g->fcount, g->xc, g->ec, g->C};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
        cudaFree(dev[i]); /* errors ignored: nothing more to do with them */
    free(g->h_count), free(g->h_ok), free(g->h_l0), free(g->h_rowsum), free(g->h_start);
    free(g);
}

static int dev_alloc(void *p, size_t bytes)
{
    return CU(&G, cudaMalloc((void **)p, bytes > 0 ? bytes : 1));
}

/* w's device state for d_in x d_sae, made on first use; NULL after a CUDA error. */
static sae_gpu *state_for(dm_sae_work *w, int64_t d_in, int64_t d_sae)
{
    sae_gpu *g = (sae_gpu *)dm_sae_work_device(w);
    if (G.broken || g)
        return G.broken ? NULL : g;
    if (!G.blas && BL(&G, cublasCreate(&G.blas))) /* default math: each GEMM's compute type says its precision */
        return NULL;
    g = (sae_gpu *)calloc(1, sizeof *g);
    if (!g) {
        gpu_failed(&G, "state", "out of host memory");
        return NULL;
    }
    const size_t T = (size_t)dm_sae_work_tile(w), di = (size_t)d_in, ds = (size_t)d_sae;
    g->gemm = dm_sae_work_compute(w)->gemm;
    g->d_in = d_in, g->d_sae = d_sae, g->tile = (int64_t)T;
    g->h_count = (int *)malloc(T * sizeof(int));
    g->h_ok = (int *)malloc(T * sizeof(int));
    g->h_l0 = (int *)malloc(T * sizeof(int));
    g->h_rowsum = (double *)malloc(T * 2 * sizeof(double));
    g->h_start = (long long *)malloc((T + 1) * sizeof(long long));
    int rc = !g->h_count || !g->h_ok || !g->h_l0 || !g->h_rowsum || !g->h_start
                 ? gpu_failed(&G, "state", "out of host memory")
                 : 0;
    rc = rc || dev_alloc(&g->W_enc, di * ds * 4) || dev_alloc(&g->W_dec, ds * di * 4) || dev_alloc(&g->b_enc, ds * 4) ||
         dev_alloc(&g->b_dec, di * 4) || dev_alloc(&g->thr, ds * 4) || dev_alloc(&g->x, T * di * 4) ||
         dev_alloc(&g->xin, T * di * 4) || dev_alloc(&g->f, T * ds * 4) || dev_alloc(&g->recon, T * di * 4) ||
         dev_alloc(&g->resid, T * di * 4) || dev_alloc(&g->coef, T * 2 * 8) || dev_alloc(&g->finite, T * 4) ||
         dev_alloc(&g->count, T * 4) || dev_alloc(&g->start, (T + 1) * 8) || dev_alloc(&g->ok, T * 4) ||
         dev_alloc(&g->l0, T * 4) || dev_alloc(&g->rowsum, T * 2 * 8) || dev_alloc(&g->colmom, 8 * di * 8) ||
         dev_alloc(&g->featmom, 4 * ds * 8) || dev_alloc(&g->fcount, ds * 8);
    if (rc) {
        state_release(g);
        return NULL;
    }
    dm_sae_work_set_device(w, g, state_release);
    return g;
}

/* Room for n actives on the device (grown, kept). */
static int reserve_actives(sae_gpu *g, int64_t n)
{
    if (n <= g->cap)
        return 0;
    int64_t cap = g->cap ? g->cap : 4096;
    while (cap < n)
        cap *= 2;
    cudaFree(g->feature), cudaFree(g->value);
    g->feature = NULL, g->value = NULL, g->cap = 0;
    if (dev_alloc(&g->feature, (size_t)cap * 4) || dev_alloc(&g->value, (size_t)cap * 4))
        return -1;
    g->cap = cap;
    return 0;
}

static int up(void *d, const void *h, size_t bytes) { return CU(&G, gpu_upload(d, h, bytes)); }
static int down(void *h, const void *d, size_t bytes) { return CU(&G, cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost)); }

/* s's weights on the device, once per SAE. */
static int upload_weights(sae_gpu *g, const dm_sae *s)
{
    if (g->s == s)
        return 0;
    const size_t di = (size_t)g->d_in, ds = (size_t)g->d_sae;
    g->s = NULL;
    if (up(g->W_enc, s->W_enc, di * ds * 4) || up(g->W_dec, s->W_dec, ds * di * 4) || up(g->b_enc, s->b_enc, ds * 4) ||
        up(g->b_dec, s->b_dec, di * 4))
        return -1;
    if (s->cfg.arch == DM_SAE_JUMPRELU ? up(g->thr, s->threshold, ds * 4) : CU(&G, cudaMemset(g->thr, 0, ds * 4)))
        return -1;
    g->s = s;
    return 0;
}

/* C (M x N, column-major) = A (M x K) B (K x N), FP32 in and out, in the
 * work's precision (common.cuh's gpu_gemm: FP32 pedantic, TF32, or BF16
 * operands; FP32 accumulation). */
static int sgemm(const sae_gpu *g, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                 int ldc)
{
    return gpu_gemm(&G, g->gemm, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, A, lda, B, ldb, C, ldc);
}

static int launched(void) { return CU(&G, cudaGetLastError()); }

/* One pass of m <= tile rows: x (host) -> the device's f, recon, resid, the
 * actives appended to sp (as rows sp->rows ..), the non-finite rows into *bad. */
static int forward_pass(sae_gpu *g, const dm_sae *s, const float *x, long m, dm_sae_sparse *sp, int64_t *bad)
{
    const long di = (long)g->d_in, ds = (long)g->d_sae;
    if (up(g->x, x, (size_t)(m * di) * 4))
        return -1;
    row_prep<<<(unsigned)m, THREADS>>>(g->x, di, (int)s->cfg.norm, s->scaling_factor, s->cfg.apply_b_dec_to_input,
                                      g->b_dec, g->xin, g->coef, g->finite);
    /* row-major pre (m, ds) = x_in (m, di) W_enc (di, ds) is column-major
     * pre^T (ds, m) = W_enc^T (ds, di) x_in^T (di, m), each the column-major
     * view of the row-major array as it is */
    if (launched() || sgemm(g, (int)ds, (int)m, (int)di, g->W_enc, (int)ds, g->xin, (int)di, g->f, (int)ds))
        return -1;
    add_bias<<<blocks(m * ds, THREADS), THREADS>>>(g->f, g->b_enc, m, ds);
    if (s->cfg.arch == DM_SAE_TOPK)
        act_topk<<<(unsigned)m, THREADS>>>(g->f, g->finite, ds, (long)s->cfg.k);
    else
        act_threshold<<<blocks(m * ds, THREADS), THREADS>>>(g->f, g->thr, g->finite, m, ds);
    count_actives<<<(unsigned)m, THREADS>>>(g->f, g->finite, ds, g->count);
    if (launched() || down(g->h_count, g->count, (size_t)m * 4))
        return -1;
    /* the starts: sp's for its rows, the device's from 0 for this pass */
    const int64_t r0 = sp->rows, a0 = sp->start[r0];
    g->h_start[0] = 0;
    for (long r = 0; r < m; r++) {
        int c = g->h_count[r];
        *bad += c < 0;
        g->h_start[r + 1] = g->h_start[r] + (c > 0 ? c : 0);
        sp->start[r0 + r + 1] = a0 + g->h_start[r + 1];
    }
    const int64_t na = g->h_start[m];
    sp->rows += m;
    dm_sae_sparse_reserve(sp, a0 + na);
    if (reserve_actives(g, na) || up(g->start, g->h_start, (size_t)(m + 1) * 8))
        return -1;
    write_actives<<<(unsigned)m, THREADS>>>(g->f, ds, g->start, g->feature, g->value);
    if (launched() || (na && (down(sp->feature + a0, g->feature, (size_t)na * 4) ||
                              down(sp->value + a0, g->value, (size_t)na * 4))))
        return -1;
    /* row-major recon (m, di) = f (m, ds) W_dec (ds, di): column-major
     * recon^T (di, m) = W_dec^T (di, ds) f^T (ds, m) */
    if (sgemm(g, (int)di, (int)m, (int)ds, g->W_dec, (int)di, g->f, (int)ds, g->recon, (int)di))
        return -1;
    finish_rows<<<blocks(m * di, THREADS), THREADS>>>(g->recon, g->resid, g->x, g->b_dec, g->coef, g->finite, m, di);
    return launched();
}

static int forward_gpu(sae_gpu *g, const dm_sae *s, const float *x, int64_t rows, float *recon, float *residual,
                       dm_sae_sparse *sp, int64_t *bad)
{
    const int64_t di = g->d_in;
    g->valid = 0;
    dm_sae_sparse_reset(sp, rows);
    *bad = 0;
    for (int64_t t0 = 0; t0 < rows; t0 += g->tile) {
        const long m = (long)(rows - t0 < g->tile ? rows - t0 : g->tile);
        if (forward_pass(g, s, x + t0 * di, m, sp, bad) ||
            (recon && down(recon + t0 * di, g->recon, (size_t)(m * di) * 4)) ||
            (residual && down(residual + t0 * di, g->resid, (size_t)(m * di) * 4)))
            return -1;
    }
    g->last_x = x, g->last_recon = recon, g->last_resid = residual, g->last_rows = rows;
    g->valid = rows <= g->tile;
    return 0;
}

static int64_t forward(dm_sae_work *w, const dm_sae *s, const float *x, int64_t rows, float *recon, float *residual,
                       dm_sae_sparse *sp)
{
    sae_gpu *g = state_for(w, s->cfg.d_in, s->cfg.d_sae);
    int64_t bad = 0;
    if (!g || upload_weights(g, s) || forward_gpu(g, s, x, rows, recon, residual, sp, &bad))
        return fallback.forward(w, s, x, rows, recon, residual, sp);
    return bad;
}

/* ---- statistics ---------------------------------------------------------------------- */

/* Rows [t0, t0 + m) of a stats_update call onto the device: x, recon,
 * residual, and f from the actives. */
static int upload_rows(sae_gpu *g, const float *x, const float *recon, const float *residual,
                       const dm_sae_sparse *sp, int64_t t0, long m)
{
    const long di = (long)g->d_in, ds = (long)g->d_sae;
    const int64_t a0 = sp->start[t0], na = sp->start[t0 + m] - a0;
    g->valid = 0;
    for (long r = 0; r <= m; r++)
        g->h_start[r] = sp->start[t0 + r] - a0;
    if (up(g->x, x + t0 * di, (size_t)(m * di) * 4) || up(g->recon, recon + t0 * di, (size_t)(m * di) * 4) ||
        up(g->resid, residual + t0 * di, (size_t)(m * di) * 4) || CU(&G, cudaMemset(g->f, 0, (size_t)(m * ds) * 4)) ||
        reserve_actives(g, na) || up(g->start, g->h_start, (size_t)(m + 1) * 8) ||
        (na && (up(g->feature, sp->feature + a0, (size_t)na * 4) || up(g->value, sp->value + a0, (size_t)na * 4))))
        return -1;
    scatter_actives<<<blocks(m, THREADS), THREADS>>>(g->f, m, ds, g->start, g->feature, g->value);
    return launched();
}

/* The block of the m rows on the device (x, recon, resid, f) into b. */
static int block_gpu(sae_gpu *g, dm_sae_block *b, long m)
{
    const long d = (long)g->d_in, ds = (long)g->d_sae;
    row_sums<<<(unsigned)m, THREADS>>>(g->x, g->recon, g->resid, g->f, d, ds, g->ok, g->rowsum, g->rowsum + m, g->l0);
    if (launched() || down(g->h_ok, g->ok, (size_t)m * 4) || down(g->h_l0, g->l0, (size_t)m * 4) ||
        down(g->h_rowsum, g->rowsum, (size_t)(2 * m) * 8))
        return -1;
    /* the token sums in row order, as sae.c's token_sums */
    for (long r = 0; r < m; r++) {
        if (g->h_ok[r] < 0) {
            b->nonfinite++;
            continue;
        }
        b->n++;
        b->sse += g->h_rowsum[r];
        if (g->h_ok[r])
            b->cos_sum += g->h_rowsum[m + r];
        else
            b->cos_undefined++;
        int64_t l0 = g->h_l0[r];
        b->l0_hist[l0]++;
        b->l0_sum += l0;
        if (l0 > b->l0_max)
            b->l0_max = l0;
    }
    const long nf = (long)b->n;
    if (nf == 0)
        return 0;
    b->mx.n = b->me.n = b->feat.n = nf;
    /* x's and e's mean, m2, m3, m4 (colmom (8, d)): blocks of rows (common.cuh) */
    if (gpu_column_pass(&G, 0, g->x, m, d, g->ok, nf, NULL, g->colmom) ||
        gpu_column_pass(&G, 0, g->x, m, d, g->ok, nf, g->colmom, g->colmom + d) ||
        gpu_column_pass(&G, 0, g->resid, m, d, g->ok, nf, NULL, g->colmom + 4 * d) ||
        gpu_column_pass(&G, 0, g->resid, m, d, g->ok, nf, g->colmom + 4 * d, g->colmom + 5 * d))
        return -1;
    feat_moments<<<blocks(ds, THREADS), THREADS>>>(g->f, m, ds, nf, g->featmom, g->fcount);
    if (launched())
        return -1;
    double *xm[] = {b->mx.mean, b->mx.m2, b->mx.m3, b->mx.m4, b->me.mean, b->me.m2, b->me.m3, b->me.m4};
    for (int i = 0; i < 8; i++)
        if (down(xm[i], g->colmom + i * d, (size_t)d * 8))
            return -1;
    double *fm[] = {b->feat.mean, b->feat.m2, b->feat.m3, b->feat.m4};
    for (int i = 0; i < 4; i++)
        if (down(fm[i], g->featmom + i * ds, (size_t)ds * 8))
            return -1;
    static_assert(sizeof(long long) == sizeof(int64_t), "feature counts come back as int64_t");
    if (down(b->count, g->fcount, (size_t)ds * 8))
        return -1;
    if (!b->predictability)
        return 0;
    if ((!g->xc && (dev_alloc(&g->xc, (size_t)(g->tile * d) * 8) || dev_alloc(&g->ec, (size_t)(g->tile * d) * 8) ||
                    dev_alloc(&g->C, (size_t)(2 * d * d) * 8))))
        return -1;
    centre_rows<<<blocks(m * d, THREADS), THREADS>>>(g->x, m, d, g->colmom, g->ok, g->xc);
    centre_rows<<<blocks(m * d, THREADS), THREADS>>>(g->resid, m, d, g->colmom + 4 * d, g->ok, g->ec);
    const double one = 1.0, zero = 0.0;
    double *Cxx = g->C, *Cex = g->C + d * d;
    /* row-major Xc (m, d) is column-major Xc^T (d, m): Cxx = Xc^T Xc is syrk(N)
     * of it, whose column-major upper triangle is the row-major lower one
     * (stats.h's half; the other half zeroed). Row-major Cex (d, d) = Ec^T Xc
     * is column-major Xc^T Ec: gemm(N, T) of the views. */
    if (launched() || CU(&G, cudaMemset(Cxx, 0, (size_t)(d * d) * 8)) ||
        BL(&G, cublasDsyrk(G.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, (int)d, (int)m, &one, g->xc, (int)d, &zero, Cxx,
                           (int)d)) ||
        BL(&G, cublasDgemm(G.blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)d, (int)d, (int)m, &one, g->xc, (int)d, g->ec, (int)d,
                           &zero, Cex, (int)d)) ||
        down(b->cxx.C, Cxx, (size_t)(d * d) * 8) || down(b->cex.C, Cex, (size_t)(d * d) * 8))
        return -1;
    b->cxx.n = b->cex.n = nf;
    memcpy(b->cxx.mean, b->mx.mean, (size_t)d * 8);
    memcpy(b->cex.mean_x, b->me.mean, (size_t)d * 8);
    memcpy(b->cex.mean_y, b->mx.mean, (size_t)d * 8);
    return 0;
}

/* The rows [t0, rows) of a call on the fallback entry (its actives' starts made relative). */
static void stats_fallback(dm_sae_work *w, dm_sae_stats *st, const float *x, const float *recon,
                           const float *residual, const dm_sae_sparse *sp, int64_t rows, int64_t t0, int64_t d)
{
    if (t0 == 0) {
        fallback.stats_update(w, st, x, recon, residual, sp, rows);
        return;
    }
    dm_sae_sparse rest = *sp;
    int64_t *start = (int64_t *)dm_xmalloc((size_t)(rows - t0 + 1) * sizeof(int64_t));
    for (int64_t r = 0; r <= rows - t0; r++)
        start[r] = sp->start[t0 + r] - sp->start[t0];
    rest.start = start, rest.rows = rows - t0;
    rest.feature = sp->feature + sp->start[t0], rest.value = sp->value + sp->start[t0];
    fallback.stats_update(w, st, x + t0 * d, recon + t0 * d, residual + t0 * d, &rest, rows - t0);
    free(start);
}

static void stats_update(dm_sae_work *w, dm_sae_stats *st, const float *x, const float *recon,
                         const float *residual, const dm_sae_sparse *sp, int64_t rows)
{
    if (rows <= 0)
        return;
    dm_sae_block b;
    dm_sae_block_init(&b, st);
    const int64_t d = b.d_in;
    sae_gpu *g = w ? state_for(w, b.d_in, b.d_sae) : NULL;
    int64_t t0 = 0;
    if (g) {
        const int kept = g->valid && x == g->last_x && recon == g->last_recon && residual == g->last_resid &&
                         rows == g->last_rows;
        for (; t0 < rows; t0 += g->tile) {
            const long m = (long)(rows - t0 < g->tile ? rows - t0 : g->tile);
            if (t0) {
                dm_sae_block_free(&b);
                dm_sae_block_init(&b, st);
            }
            if ((!kept && upload_rows(g, x, recon, residual, sp, t0, m)) || block_gpu(g, &b, m) ||
                dm_sae_stats_add_block(st, &b))
                break;
        }
    }
    dm_sae_block_free(&b);
    if (!g || t0 < rows)
        stats_fallback(w, st, x, recon, residual, sp, rows, t0, d);
}

static const float *device_rows(dm_sae_work *w, const float *host, int64_t rows)
{
    sae_gpu *g = (sae_gpu *)dm_sae_work_device(w);
    if (!g || !g->valid || G.broken || !host || rows > g->last_rows)
        return NULL;
    return host == g->last_resid ? g->resid : host == g->last_recon ? g->recon : NULL;
}

/* ---- what the library exports (cuda_abi.h) ----------------------------------------- */

extern "C" int dm_cuda_sae_backend(const void *fb, void *out)
{
    fallback = *(const dm_sae_backend *)fb;
    dm_sae_backend be = {"cuda", forward, stats_update, device_rows};
    *(dm_sae_backend *)out = be;
    return 0;
}
