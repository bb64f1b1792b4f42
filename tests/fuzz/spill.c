/*
 * spill.c: fuzzes the spill reader (io/spill.c): the manifest NAME.json
 * (version, rows, cols, dtype, codec, the chunk table) and the replay of
 * NAME.spill it describes (sequential, random access, verify).
 *
 * The input is the manifest, FZ_SEP, then the data file. Each chunk's xxh64 in
 * a manifest that parses is recomputed from the data before the reader sees
 * it, so that decoding (zstd, f16, bf16) is fuzzed too and not only the
 * checksum mismatch that any change to the data would otherwise stop at.
 * An input whose first byte is '!' keeps its checksums as written.
 */
#include "fuzz.h"
#include "spill.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static char *fix_checksums(const uint8_t *m, size_t mlen, const uint8_t *d, size_t dlen, size_t *outlen)
{
    json_t *root = json_loadb((const char *)m, mlen, 0, NULL);
    json_t *chunks = json_object_get(root, "chunks");
    if (!json_is_array(chunks)) {
        json_decref(root);
        return NULL;
    }
    size_t i;
    json_t *c;
    json_array_foreach(chunks, i, c) {
        json_t *o = json_object_get(c, "offset"), *b = json_object_get(c, "bytes");
        if (!json_is_integer(o) || !json_is_integer(b) || !json_is_string(json_object_get(c, "xxh64")))
            continue;
        json_int_t off = json_integer_value(o), n = json_integer_value(b);
        if (off < 0 || n < 0 || (size_t)off > dlen || (size_t)n > dlen - (size_t)off)
            continue;
        char hex[32];
        snprintf(hex, sizeof hex, "0x%016llx", (unsigned long long)XXH64(d + off, (size_t)n, 0));
        json_object_set_new(c, "xxh64", json_string(hex));
    }
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (s)
        *outlen = strlen(s);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *parts[2];
    size_t lens[2];
    int keep = size > 0 && data[0] == '!';
    fz_split(data + keep, size - keep, 2, parts, lens);
    size_t mlen = lens[0];
    char *fixed = keep ? NULL : fix_checksums(parts[0], lens[0], parts[1], lens[1], &mlen);
    char *mp = fz_write("s/x.json", fixed ? fixed : (const char *)parts[0], fixed ? mlen : lens[0]);
    char *dp = fz_write("s/x.spill", parts[1], lens[1]);
    free(fixed);
    char *dir = strdup(mp);
    *strrchr(dir, '/') = 0;

    dm_spill_reader *r = dm_spill_reader_open(dir, "x");
    if (r) {
        int64_t cols = dm_spill_cols(r), maxr = dm_spill_max_chunk_rows(r), rows = dm_spill_rows(r);
        size_t isz = dm_dtype_size(dm_spill_dtype(r));
        /* The engine sizes replay buffers by the manifest; a manifest may claim
         * more (zstd chunks) than is sensible to allocate here. */
        if (cols > 0 && maxr > 0 && cols <= (1 << 20) && maxr <= (64 << 20) / cols) {
            void *buf = malloc((size_t)(maxr * cols) * isz);
            for (int pass = 0; pass < 2; pass++) {
                dm_chunk ch = {0};
                ch.ptr = buf;
                while (dm_spill_next(r, &ch) == 0 && ch.rows > 0)
                    ;
                if (dm_spill_rewind(r))
                    break;
            }
            if (rows > 0) {
                int64_t n = rows < maxr ? rows : maxr;
                dm_spill_read_rows(r, 0, n, buf);
                dm_spill_read_rows(r, rows - n, n, buf);
                dm_spill_read_rows(r, rows - 1, 2, buf); /* past the end: an error */
            }
            free(buf);
        }
        dm_spill_reader_close(r);
        dm_spill_verify(dir, "x");
    }
    fz_end();
    free(dir);
    free(mp);
    free(dp);
    return 0;
}
