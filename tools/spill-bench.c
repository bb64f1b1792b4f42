/*
 * spill-bench: spill write and replay throughput, for tools/bench.d/20-spill.sh.
 *
 *   spill-bench DIR GB [codec] [dtype]
 *
 * Writes GB gigabytes of float32 rows (768 wide, 4096-row chunks) as spill
 * NAME "bench" in DIR through dm_spill_writer (fsync included), then replays
 * them with dm_spill_next, dropping the page cache between the two when it can
 * (root), and prints "write_s W_GBps replay_s R_GBps cold|warm" on stdout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dm.h"
#include "spill.h"

static int drop_caches(void)
{
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    if (!f)
        return 0;
    int ok = fputs("3\n", f) >= 0;
    return fclose(f) == 0 && ok;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spill-bench DIR GB [none|zstd] [f32|f16|bf16]\n");
        return 2;
    }
    const int64_t cols = 768, rows = 4096;
    double gb = atof(argv[2]);
    dm_codec codec = DM_CODEC_NONE;
    dm_dtype dtype = DM_F32;
    if (argc > 3 && dm_codec_parse(argv[3], &codec))
        return fprintf(stderr, "%s\n", dm_error()), 2;
    if (argc > 4 && dm_dtype_parse(argv[4], &dtype))
        return fprintf(stderr, "%s\n", dm_error()), 2;
    int64_t nchunks = (int64_t)(gb * 1e9 / (double)(rows * cols * 4)) + 1;
    float *buf = dm_xmalloc_aligned((size_t)(rows * cols) * sizeof(float));
    uint64_t s = 42;
    for (int64_t i = 0; i < rows * cols; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (float)((double)(s >> 11) * 0x1p-53 - 0.5);
    }
    double t0 = dm_now();
    dm_spill_writer *w = dm_spill_writer_open(argv[1], "bench", cols, dtype, codec);
    if (!w)
        return fprintf(stderr, "spill-bench: %s\n", dm_error()), 1;
    for (int64_t c = 0; c < nchunks; c++) {
        dm_chunk ch = {.row0 = c * rows, .rows = rows, .cols = cols, .data = buf};
        if (dm_spill_write(w, &ch))
            return fprintf(stderr, "spill-bench: %s\n", dm_error()), 1;
    }
    if (dm_spill_writer_close(w))
        return fprintf(stderr, "spill-bench: %s\n", dm_error()), 1;
    double tw = dm_now() - t0, bytes = (double)nchunks * (double)(rows * cols * 4);
    int cold = drop_caches();
    dm_spill_reader *r = dm_spill_reader_open(argv[1], "bench");
    if (!r)
        return fprintf(stderr, "spill-bench: %s\n", dm_error()), 1;
    dm_chunk out = {.cols = cols, .data = buf};
    t0 = dm_now();
    int64_t got = 0;
    for (;;) {
        if (dm_spill_next(r, &out))
            return fprintf(stderr, "spill-bench: %s\n", dm_error()), 1;
        if (!out.rows)
            break;
        got += out.rows;
    }
    double tr = dm_now() - t0;
    dm_spill_reader_close(r);
    if (got != nchunks * rows)
        return fprintf(stderr, "spill-bench: replayed %lld rows of %lld\n", (long long)got, (long long)(nchunks * rows)), 1;
    printf("%.3f %.3f %.3f %.3f %s %.0f\n", tw, bytes / tw / 1e9, tr, bytes / tr / 1e9, cold ? "cold" : "warm", bytes);
    free(buf);
    return 0;
}
