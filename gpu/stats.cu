/*
 * stats.cu: the "cuda" entry of dm_stats_backend (operators/kernels/stats.h):
 * per-column moments, covariance and cross-covariance co-moments of a chunk,
 * and the projection on k directions.
 *
 * Each update computes the chunk's own accumulator on the GPU, in double, and
 * the host merges it into the running one with the CPU's merge (Pebay; Chan,
 * Golub and LeVeque): the same two-level scheme as the CPU's fast updates
 * (chunk statistics, then one merge), so results agree with "ref" to the same
 * tolerance (tests/test_gpu.c).
 *   moments:      two passes over the chunk (the mean, then the centred
 *                 powers), each in blocks of 512 rows by 32 columns summed in
 *                 double, then the blocks' sums in block order (reproducible).
 *   co-moments:   the chunk centred in double on the GPU, then cublasDsyrk
 *                 (covariance) or cublasDgemm (cross-covariance).
 *   projection:   the chunk centred in float, then cublasSgemm (float32 with
 *                 float accumulation, as the CPU's sgemm: about 1e-6 relative).
 * Memory on the GPU grows to the largest chunk seen and is kept for the next.
 * A CUDA error is reported once and the call (and every later one) is computed
 * by the fallback entry on the CPU (cuda_abi.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

extern "C" {
#include "stats.h"
}

static dm_stats_backend fallback;
static gpu_family G = {"the statistics"};

static void *buffer(int i, size_t n) { return gpu_buffer(&G, i, n); }
static unsigned blocks(long n, int threads) { return gpu_blocks(n, threads); }

/* ---- kernels --------------------------------------------------------------------- */

__global__ void centre_double(const float *x, long rows, long d, const double *mean, double *out)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < rows * d)
        out[i] = (double)x[i] - mean[i % d];
}

__global__ void centre_float(const float *x, long rows, long d, const float *mean, float *out)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < rows * d)
        out[i] = mean ? x[i] - mean[i % d] : x[i];
}

/* The chunk x (rows, d) on the GPU (buffer 0), and its column means (buffer 1,
 * doubles; a copy into host `mean`). */
static const float *upload_with_mean(const float *x, long rows, long d, double *mean)
{
    float *dx = (float *)buffer(0, (size_t)(rows * d) * sizeof(float));
    double *dmean = (double *)buffer(1, (size_t)d * 4 * sizeof(double));
    if (!dx || !dmean || CU(&G, gpu_upload(dx, x, (size_t)(rows * d) * sizeof(float))))
        return NULL;
    if (gpu_column_pass(&G, 4, dx, rows, d, NULL, rows, NULL, dmean) ||
        CU(&G, cudaMemcpy(mean, dmean, (size_t)d * sizeof(double), cudaMemcpyDeviceToHost)))
        return NULL;
    return dx;
}

/* ---- the entries ------------------------------------------------------------------ */

static int moments_gpu(dm_moments *m, const float *x, int64_t rows)
{
    long d = (long)m->d;
    dm_moments b;
    dm_moments_init(&b, d);
    b.n = rows;
    const float *dx = upload_with_mean(x, rows, d, b.mean);
    double *dm = (double *)G.buf[1];
    int rc = dx ? 0 : -1;
    if (!rc) {
        rc = gpu_column_pass(&G, 4, dx, rows, d, NULL, rows, dm, dm + d) || CU(&G, cudaMemcpy(b.m2, dm + d, (size_t)d * sizeof(double), cudaMemcpyDeviceToHost)) ||
             CU(&G, cudaMemcpy(b.m3, dm + 2 * d, (size_t)d * sizeof(double), cudaMemcpyDeviceToHost)) ||
             CU(&G, cudaMemcpy(b.m4, dm + 3 * d, (size_t)d * sizeof(double), cudaMemcpyDeviceToHost));
    }
    if (!rc)
        dm_moments_merge(m, &b);
    dm_moments_free(&b);
    return rc;
}

static void moments_update(dm_moments *m, const float *x, int64_t rows)
{
    if (rows <= 0)
        return;
    if (gpu_ready(&G) || moments_gpu(m, x, rows))
        fallback.moments_update(m, x, rows);
}

static int covariance_gpu(dm_covariance *c, const float *x, int64_t rows)
{
    long d = (long)c->d;
    dm_covariance b;
    dm_covariance_init(&b, d);
    b.n = rows;
    const float *dx = upload_with_mean(x, rows, d, b.mean);
    double *dxc = dx ? (double *)buffer(2, (size_t)(rows * d) * sizeof(double)) : NULL;
    double *dC = dxc ? (double *)buffer(3, (size_t)(d * d) * sizeof(double)) : NULL;
    int rc = dC ? 0 : -1;
    if (!rc) {
        centre_double<<<blocks(rows * d, 256), 256>>>(dx, rows, d, (double *)G.buf[1], dxc);
        const double one = 1.0, zero = 0.0;
        /* row-major Xc (rows, d) is column-major Xc^T (d, rows): C = Xc^T Xc is
         * syrk(N) of it; column-major upper = row-major lower (stats.h's half) */
        rc = CU(&G, cudaGetLastError()) ||
             BL(&G, cublasDsyrk(G.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, (int)d, (int)rows, &one, dxc, (int)d, &zero,
                            dC, (int)d)) ||
             CU(&G, cudaMemcpy(b.C, dC, (size_t)(d * d) * sizeof(double), cudaMemcpyDeviceToHost));
    }
    if (!rc)
        dm_covariance_merge(c, &b);
    dm_covariance_free(&b);
    return rc;
}

static void covariance_update(dm_covariance *c, const float *x, int64_t rows)
{
    if (rows <= 0)
        return;
    if (gpu_ready(&G) || covariance_gpu(c, x, rows))
        fallback.covariance_update(c, x, rows);
}

static int xcovariance_gpu(dm_xcovariance *c, const float *x, const float *y, int64_t rows)
{
    long dx = (long)c->dx, dy = (long)c->dy;
    dm_xcovariance b;
    dm_xcovariance_init(&b, dx, dy);
    b.n = rows;
    /* x centred into buffer 2, then y (buffer 0 again) centred into buffer 3's tail */
    const float *gx = upload_with_mean(x, rows, dx, b.mean_x);
    double *cx = gx ? (double *)buffer(2, (size_t)(rows * (dx + dy)) * sizeof(double)) : NULL;
    int rc = cx ? 0 : -1;
    if (!rc) {
        centre_double<<<blocks(rows * dx, 256), 256>>>(gx, rows, dx, (double *)G.buf[1], cx);
        rc = CU(&G, cudaGetLastError());
    }
    const float *gy = rc ? NULL : upload_with_mean(y, rows, dy, b.mean_y);
    double *cy = cx + rows * dx;
    double *dC = gy ? (double *)buffer(3, (size_t)(dx * dy) * sizeof(double)) : NULL;
    rc = dC ? 0 : -1;
    if (!rc) {
        centre_double<<<blocks(rows * dy, 256), 256>>>(gy, rows, dy, (double *)G.buf[1], cy);
        const double one = 1.0, zero = 0.0;
        /* row-major C (dx, dy) is column-major C^T (dy, dx) = Yc^T Xc, with Yc^T
         * the column-major view (dy, rows) of row-major Yc, Xc^T likewise */
        rc = CU(&G, cudaGetLastError()) ||
             BL(&G, cublasDgemm(G.blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)dy, (int)dx, (int)rows, &one, cy, (int)dy, cx,
                            (int)dx, &zero, dC, (int)dy)) ||
             CU(&G, cudaMemcpy(b.C, dC, (size_t)(dx * dy) * sizeof(double), cudaMemcpyDeviceToHost));
    }
    if (!rc)
        dm_xcovariance_merge(c, &b);
    dm_xcovariance_free(&b);
    return rc;
}

static void xcovariance_update(dm_xcovariance *c, const float *x, const float *y, int64_t rows)
{
    if (rows <= 0)
        return;
    if (gpu_ready(&G) || xcovariance_gpu(c, x, y, rows))
        fallback.xcovariance_update(c, x, y, rows);
}

static int project_gpu(float *out, const float *x, int64_t rows, const float *W, int64_t k, int64_t d,
                       const float *mean)
{
    float *dx = (float *)buffer(0, (size_t)(rows * d) * sizeof(float));
    float *dxc = (float *)buffer(2, (size_t)(rows * d) * sizeof(float));
    float *dW = (float *)buffer(3, (size_t)(k * d + d) * sizeof(float));
    float *dout = (float *)buffer(1, (size_t)(rows * k) * sizeof(float));
    if (!dx || !dxc || !dW || !dout)
        return -1;
    float *dmean = mean ? dW + k * d : NULL;
    if (CU(&G, gpu_upload(dx, x, (size_t)(rows * d) * sizeof(float))) ||
        CU(&G, gpu_upload(dW, W, (size_t)(k * d) * sizeof(float))) ||
        (mean && CU(&G, gpu_upload(dmean, mean, (size_t)d * sizeof(float)))))
        return -1;
    centre_float<<<blocks(rows * d, 256), 256>>>(dx, rows, d, dmean, dxc);
    const float one = 1.0f, zero = 0.0f;
    /* row-major out (rows, k) is column-major (k, rows) = W Xc^T: W row-major
     * (k, d) is column-major (d, k), transposed; Xc^T the column-major view */
    return CU(&G, cudaGetLastError()) ||
                   BL(&G, cublasSgemm(G.blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)k, (int)rows, (int)d, &one, dW, (int)d, dxc,
                                  (int)d, &zero, dout, (int)k)) ||
                   CU(&G, cudaMemcpy(out, dout, (size_t)(rows * k) * sizeof(float), cudaMemcpyDeviceToHost))
               ? -1
               : 0;
}

static void project(float *out, const float *x, int64_t rows, const float *W, int64_t k, int64_t d,
                    const float *mean, float *xc)
{
    if (rows <= 0)
        return;
    if (gpu_ready(&G) || project_gpu(out, x, rows, W, k, d, mean))
        fallback.project(out, x, rows, W, k, d, mean, xc);
}

/* ---- what the library exports (cuda_abi.h) ----------------------------------------- */

extern "C" int dm_cuda_abi(void) { return DM_CUDA_ABI; }

extern "C" int dm_cuda_probe(char *name, int len)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0)
        return 0;
    cudaDeviceProp p;
    if (name && len > 0 && cudaGetDeviceProperties(&p, 0) == cudaSuccess)
        snprintf(name, (size_t)len, "%s", p.name);
    return n;
}

extern "C" int dm_cuda_stats_backend(const void *fb, void *out)
{
    fallback = *(const dm_stats_backend *)fb;
    dm_stats_backend be = {"cuda", moments_update, covariance_update, xcovariance_update, project};
    *(dm_stats_backend *)out = be;
    return 0;
}
