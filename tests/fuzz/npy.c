/*
 * npy.c: fuzzes the .npy reader (io/npy.c): the header (magic, version, the
 * dict, dtype, shape, fortran_order) and the size checks against the file, then
 * reads what the header says is there, so that a wrong size check shows up as
 * a read past the mapping.
 */
#include "fuzz.h"
#include "npy.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *path = fz_write("x.npy", data, size);
    dm_npy_map *m = dm_npy_open(path);
    if (m) {
        const dm_npy_header *h = dm_npy_hdr(m);
        int64_t numel = 1;
        for (int i = 0; i < h->ndim; i++)
            numel *= h->shape[i];
        /* Every byte of the data: the header's size must fit the file. */
        const unsigned char *d = dm_npy_data(m);
        volatile unsigned sum = 0;
        for (int64_t i = 0; i < numel * (int64_t)dm_dtype_size(h->dtype); i++)
            sum += d[i];
        (void)sum;
        if (h->ndim == 2 && h->shape[1] <= 4096) {
            int64_t rows = h->shape[0] < 4 ? h->shape[0] : 4;
            float *out = malloc((size_t)(rows * h->shape[1] + 1) * sizeof *out);
            dm_npy_read_rows_f32(m, 0, rows, out);
            dm_npy_read_rows_f32(m, h->shape[0] - rows, rows, out);
            dm_npy_read_rows_f32(m, h->shape[0], 1, out); /* past the end: an error */
            free(out);
        }
        dm_npy_close(m);
        dm_tensor t;
        if (dm_npy_load(path, &t) == 0)
            dm_tensor_free(&t);
    }
    fz_end();
    free(path);
    return 0;
}
