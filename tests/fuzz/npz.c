/*
 * npz.c: fuzzes the .npz reader (io/npz.c): the end records (ZIP64 too), the
 * central directory and its ZIP64 fields, the local headers, each member's
 * .npy header (stored or deflated), then reads every float array whole, so
 * that a size check that lets a member out of the file shows up as a read past
 * the mapping; and the same file as a Gemma Scope SAE (sae.c: its arrays'
 * names, dtypes and shapes, then the weights where they are small).
 */
#include "fuzz.h"
#include "npz.h"
#include "sae.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *path = fz_write("params.npz", data, size);
    dm_npz *z = dm_npz_open(path);
    if (z) {
        for (int i = 0; i < dm_npz_count(z); i++) {
            dm_npy_header h;
            if (dm_npz_find(z, dm_npz_name(z, i)) < 0)
                abort(); /* every array is found by its name */
            if (dm_npz_header(z, i, &h))
                continue;
            int64_t numel = 1;
            for (int k = 0; k < h.ndim; k++)
                numel = h.shape[k] > (1 << 22) || numel > (1 << 22) ? 1 << 23 : numel * h.shape[k];
            if (numel <= (1 << 20)) {
                float *out = malloc((size_t)(numel + 1) * sizeof *out);
                dm_npz_read_f32(z, i, out);
                free(out);
            }
        }
        dm_npz_close(z);
    }
    fz_end();
    dm_sae_config c;
    if (dm_sae_read_config(path, &c) == 0) {
        if (c.d_in * c.d_sae <= (1 << 20)) {
            dm_sae *s = dm_sae_load(path, 0, dm_compute_default());
            dm_sae_free(s);
        }
        dm_sae_config_free(&c);
    }
    fz_end();
    free(path);
    return 0;
}
