/*
 * fastica.cu: the "cuda" entry of dm_ica_backend (operators/kernels/fastica.h):
 * one FastICA iteration's two sums over a chunk of whitened rows z (rows, k),
 * for the stacked unmixing rows W (m, k) of the seeds still running:
 *   gz (m, k) += sum over rows of g(W z) z^T,   dg (m) += sum over rows of g'(W z).
 *
 *   Y = Z W^T        cublasSgemm in FP32 (W rounded to float, as the "cpu"
 *                    entry does), pedantic math (never TF32);
 *   g, g'            blocks of 256 rows by 32 stacked rows: g(y) into G
 *                    (rows, m) in double, g'(y) summed in double per block,
 *                    then the blocks' sums in block order (reproducible);
 *                    tanh and exp in double;
 *   gz += G^T Z      cublasDgemm on z converted to double.
 * A matrix iterated in memory is held on the GPU for its iterations (hold:
 * z in float and double, sent once), where its memory allows.
 * The chunk's sums are added to the host accumulator (double), so a pass
 * splits across chunks, shards and ranks exactly as on the CPU. Against "ref"
 * (double throughout) the float rounding of W z is the only difference, as for
 * the "cpu" entry: tests/test_fastica.c holds both to 1e-5 of the sums' scale.
 * On a CUDA error: one warning, then the fallback entry (cuda_abi.h).
 */
#include <math.h>
#include <stdlib.h>

#include "common.cuh"

extern "C" {
#include "fastica.h"
}

static dm_ica_backend fallback;
static gpu_family G = {"FastICA's sums"};

static void *buffer(int i, size_t n) { return gpu_buffer(&G, i, n); }
static unsigned blocks(long n, int threads) { return gpu_blocks(n, threads); }

__global__ void to_double(const float *x, long n, double *out)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = (double)x[i];
}

/* Rows of Y one block of apply_g takes (32 columns by 8 threads of rows). */
#define AG_ROWS 256

/* G[r*m + j] = g(Y[r*m + j]) for the block's AG_ROWS rows and 32 columns, and
 * partial[blockIdx.x * m + j] = the block's sum over its rows of g'(Y[r*m + j]),
 * in double (each thread's rows in order, then the 8 threads in order). */
__global__ void apply_g(const float *Y, long rows, long m, int fun, double alpha, double *G, double *partial)
{
    __shared__ double red[8][32];
    long j = blockIdx.y * 32L + threadIdx.x, r0 = blockIdx.x * (long)AG_ROWS;
    double s = 0.0;
    if (j < m)
        for (long r = r0 + threadIdx.y; r < r0 + AG_ROWS && r < rows; r += 8) {
            double u = (double)Y[r * m + j], g, gp;
            if (fun == DM_ICA_LOGCOSH) {
                g = tanh(alpha * u);
                gp = alpha * (1.0 - g * g);
            } else if (fun == DM_ICA_EXP) {
                double e = exp(-0.5 * u * u);
                g = u * e;
                gp = (1.0 - u * u) * e;
            } else {
                g = u * u * u;
                gp = 3.0 * u * u;
            }
            G[r * m + j] = g;
            s += gp;
        }
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < m) {
        for (int t = 1; t < 8; t++)
            s += red[t][threadIdx.x];
        partial[blockIdx.x * m + j] = s;
    }
}

/* dg[j] = the blocks' partial sums of column j, in block order. */
__global__ void sum_partials(const double *partial, long nb, long m, double *dg)
{
    long j = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (j >= m)
        return;
    double s = 0.0;
    for (long b = 0; b < nb; b++)
        s += partial[b * m + j];
    dg[j] = s;
}

/* A matrix held on the GPU (hold): its host address and rows, and its copies
 * in float and double. */
static struct {
    const float *z;
    long rows, k;
    float *dz;
    double *dzd;
    size_t cap; /* floats of room */
} held;

static void hold(const float *z, int64_t rows, int64_t k)
{
    held.z = NULL;
    if (!z || rows <= 0 || G.broken || gpu_ready(&G))
        return;
    size_t n = (size_t)(rows * k);
    if (held.cap < n) {
        cudaFree(held.dz), cudaFree(held.dzd);
        held.dz = NULL, held.dzd = NULL, held.cap = 0;
        if (cudaMalloc(&held.dz, n * sizeof(float)) != cudaSuccess ||
            cudaMalloc(&held.dzd, n * sizeof(double)) != cudaSuccess) {
            cudaGetLastError(); /* no room: the rows are sent with each call instead */
            cudaFree(held.dz), cudaFree(held.dzd);
            held.dz = NULL, held.dzd = NULL;
            return;
        }
        held.cap = n;
    }
    if (CU(&G, gpu_upload(held.dz, z, n * sizeof(float))))
        return;
    to_double<<<blocks((long)n, 256), 256>>>(held.dz, (long)n, held.dzd);
    if (CU(&G, cudaGetLastError()))
        return;
    held.z = z, held.rows = (long)rows, held.k = (long)k;
}

static int sums_gpu(dm_ica_sums *s, dm_ica_fun fun, double alpha, const double *Wd, int64_t mrows, const float *z,
                    int64_t rows)
{
    long k = (long)s->k, m = (long)mrows, nb = (long)((rows + AG_ROWS - 1) / AG_ROWS);
    if (gpu_ready(&G))
        return -1;
    /* z on the GPU: inside the held matrix, or sent now */
    int in_held = held.z && held.k == k && z >= held.z && z + rows * k <= held.z + held.rows * k;
    float *dz = in_held ? held.dz + (z - held.z) : (float *)buffer(0, (size_t)(rows * k) * sizeof(float));
    float *dW = (float *)buffer(1, (size_t)(m * k) * sizeof(float));
    float *dY = (float *)buffer(2, (size_t)(rows * m) * sizeof(float));
    double *dG = (double *)buffer(3, (size_t)(rows * m + (in_held ? 0 : rows * k)) * sizeof(double));
    double *dout = (double *)buffer(4, (size_t)(m * k + m) * sizeof(double));
    double *dpart = (double *)buffer(5, (size_t)(nb * m) * sizeof(double));
    if (!dz || !dW || !dY || !dG || !dout || !dpart)
        return -1;
    double *dzd = in_held ? held.dzd + (z - held.z) : dG + rows * m;
    float *Wf = (float *)malloc((size_t)(m * k) * sizeof(float));
    double *out = (double *)malloc((size_t)(m * k + m) * sizeof(double));
    if (!Wf || !out) {
        free(Wf), free(out);
        return gpu_failed(&G, "malloc", "out of host memory");
    }
    for (long i = 0; i < m * k; i++)
        Wf[i] = (float)Wd[i];
    const float onef = 1.0f, zerof = 0.0f;
    const double one = 1.0, zero = 0.0;
    /* row-major Y (rows, m) is column-major (m, rows) = W Z^T: W row-major
     * (m, k) is column-major (k, m), transposed; Z^T the column-major view of Z */
    int rc = (!in_held && CU(&G, gpu_upload(dz, z, (size_t)(rows * k) * sizeof(float)))) ||
             CU(&G, gpu_upload(dW, Wf, (size_t)(m * k) * sizeof(float))) ||
             BL(&G, cublasSetMathMode(G.blas, CUBLAS_PEDANTIC_MATH)) ||
             BL(&G, cublasSgemm(G.blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)m, (int)rows, (int)k, &onef, dW, (int)k, dz,
                                (int)k, &zerof, dY, (int)m));
    if (!rc) {
        apply_g<<<dim3((unsigned)nb, (unsigned)((m + 31) / 32)), dim3(32, 8)>>>(dY, rows, m, (int)fun, alpha, dG,
                                                                               dpart);
        sum_partials<<<blocks(m, 128), 128>>>(dpart, nb, m, dout + m * k);
        if (!in_held)
            to_double<<<blocks(rows * k, 256), 256>>>(dz, rows * k, dzd);
        /* row-major gz (m, k) is column-major (k, m) = Z^T G: Z^T the column-major
         * view (k, rows) of Z; G row-major (rows, m) is column-major (m, rows),
         * transposed */
        rc = CU(&G, cudaGetLastError()) ||
             BL(&G, cublasDgemm(G.blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)k, (int)m, (int)rows, &one, dzd, (int)k, dG,
                                (int)m, &zero, dout, (int)k)) ||
             CU(&G, cudaMemcpy(out, dout, (size_t)(m * k + m) * sizeof(double), cudaMemcpyDeviceToHost));
    }
    if (!rc) {
        for (long i = 0; i < m * k; i++)
            s->gz[i] += out[i];
        for (long j = 0; j < m; j++)
            s->dg[j] += out[m * k + j];
        s->n += rows;
    }
    free(Wf), free(out);
    return rc ? -1 : 0;
}

static void sums_update(dm_ica_sums *s, dm_ica_fun fun, double alpha, const double *W, int64_t mrows, const float *z,
                        int64_t rows)
{
    if (rows <= 0 || mrows <= 0)
        return;
    if (G.broken || sums_gpu(s, fun, alpha, W, mrows, z, rows))
        fallback.sums_update(s, fun, alpha, W, mrows, z, rows);
}

extern "C" int dm_cuda_ica_backend(const void *fb, void *out)
{
    fallback = *(const dm_ica_backend *)fb;
    dm_ica_backend be = {"cuda", sums_update, hold};
    *(dm_ica_backend *)out = be;
    return 0;
}
