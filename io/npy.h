/*
 * npy.h: NumPy .npy files (format versions 1.0, 2.0 and 3.0 read; 1.0 written,
 * 2.0 when the header needs it), little-endian, C order.
 *
 * Reading maps the file (mmap) and validates the header and the data size
 * against the file size before anything is used. Writing is atomic: data goes to
 * "<path>.tmp.<pid>", is fsynced and renamed over <path> on commit; abort or an
 * error removes the temporary file, so a reader never sees half an array.
 */
#ifndef DM_NPY_H
#define DM_NPY_H

#include "dm.h"

typedef struct {
    dm_dtype dtype;   /* from descr: <f4 <f8 <f2 <i4 <i8 <u2 |u1 (and '=' forms);
                         bf16 is 'V2', as ml_dtypes saves it */
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    int64_t data_offset; /* bytes from file start to the data */
} dm_npy_header;

typedef struct dm_npy_map dm_npy_map;

/* Maps path and validates it (magic, header dict, dtype, C order, size).
 * Errors name the file: "x.npy: truncated: ...", "x.npy: fortran_order arrays
 * are not supported", "x.npy: unsupported dtype '<c8'". */
dm_npy_map *dm_npy_open(const char *path);
void dm_npy_close(dm_npy_map *m); /* accepts NULL */
/* The checks of dm_npy_open on a .npy in memory (a member of an .npz, npz.h):
 * buf holds its first avail bytes, of size in all; path names it in messages.
 * Fills h, data_offset included; the data (size - data_offset bytes at least)
 * must then fit in size. A header longer than avail is an error too. */
int dm_npy_parse(const void *buf, size_t avail, uint64_t size, const char *path, dm_npy_header *h);
const dm_npy_header *dm_npy_hdr(const dm_npy_map *m);
/* The mapped data (valid until dm_npy_close). Aligned to 64 in files numpy or
 * dmica wrote; other writers may leave it unaligned. The file must not shrink
 * while mapped (the kernel would kill the process with SIGBUS). */
const void *dm_npy_data(const dm_npy_map *m);
/* Copies rows [row0, row0+rows) of a 2-D float array (f32, f16, bf16 or f64)
 * into out as float32, and tells the kernel the pages may be dropped
 * (MADV_DONTNEED after reading) so resident memory stays bounded. */
int dm_npy_read_rows_f32(dm_npy_map *m, int64_t row0, int64_t rows, float *out);

/* Streaming writer of a 2-D array with a row count unknown until commit. */
typedef struct dm_npy_writer dm_npy_writer;
dm_npy_writer *dm_npy_writer_open(const char *path, dm_dtype dtype, int64_t cols);
/* rows x cols values of the writer's dtype. */
int dm_npy_writer_append(dm_npy_writer *w, const void *data, int64_t rows);
/* Same, converting float32 to the writer's dtype (f32, f16, bf16, f64). */
int dm_npy_writer_append_f32(dm_npy_writer *w, const float *data, int64_t rows);
/* Appends every row of the 2-D .npy at path, which must have the writer's dtype
 * and width (DM_E_CORRUPT naming path otherwise): the bytes are copied as they
 * are, in blocks, dropping the pages read behind. How a sink concatenates the
 * segments its shards wrote. */
int dm_npy_writer_append_npy(dm_npy_writer *w, const char *path);
/* Writes the final header, fsyncs, renames into place, frees w (also on error,
 * removing the temporary). */
int dm_npy_writer_commit(dm_npy_writer *w);
void dm_npy_writer_abort(dm_npy_writer *w); /* removes the temporary; accepts NULL */

/* Whole small arrays, atomically. */
int dm_npy_save(const char *path, const dm_tensor *t);
int dm_npy_load(const char *path, dm_tensor *out); /* out owns the copy */

#endif
