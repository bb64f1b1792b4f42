/*
 * safetensors.c: fuzzes the safetensors reader (io/safetensors.c): header
 * length, the JSON header, dtypes, shapes, data_offsets, __metadata__; then
 * reads every float tensor and looks each name up, so that an offset check
 * that lets a tensor out of the file shows up as a read past the mapping.
 */
#include "fuzz.h"
#include "safetensors.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *path = fz_write("x.safetensors", data, size);
    dm_safetensors *st = dm_st_open(path);
    if (st) {
        dm_st_metadata(st, "format");
        for (int i = 0; i < dm_st_count(st); i++) {
            const dm_st_tensor *t = dm_st_at(st, i);
            char shape[128];
            dm_st_shape_str(t->shape, t->ndim, shape, sizeof shape);
            if (dm_st_find(st, t->name) != t)
                abort(); /* names are unique: find must give this tensor */
            const unsigned char *d = t->data;
            volatile unsigned sum = 0;
            for (int64_t k = 0; k < t->nbytes; k++)
                sum += d[k];
            (void)sum;
            if (t->numel <= (1 << 20)) {
                float *out = malloc((size_t)(t->numel + 1) * sizeof *out);
                dm_st_read_f32(st, t, out); /* fails by name for non-float dtypes */
                free(out);
            }
        }
        dm_st_close(st);
    }
    fz_end();
    free(path);
    return 0;
}
