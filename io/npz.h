/*
 * npz.h: NumPy .npz files (numpy.savez, numpy.savez_compressed): a zip
 * archive of .npy members, one per array, "NAME.npy" holding array NAME.
 *
 * Reading maps the file and reads the zip's central directory (ZIP64 too:
 * numpy writes every member with a ZIP64 local header, and archives past 4 GiB
 * or 65535 members need the ZIP64 end records). Members are stored (method 0,
 * numpy.savez) or deflated (method 8, numpy.savez_compressed; only where dmica
 * was built with zlib). Everything the directory says is checked against the
 * file before it is used: a truncated or damaged archive is an error naming
 * the file and the member, never a read past the mapping. A member's CRC-32 is
 * checked when it is read whole (with zlib).
 *
 * Errors follow dm.h: NULL / -1 with DM_E_IO for a file that cannot be read,
 * DM_E_CORRUPT for one that is not a whole zip or whose member is not a whole
 * .npy, DM_E_INPUT for what dmica does not read (encryption, other compression
 * methods, deflate without zlib, multi-disk archives).
 */
#ifndef DM_NPZ_H
#define DM_NPZ_H

#include <stdint.h>

#include "dm.h"
#include "npy.h"

typedef struct dm_npz dm_npz;

/* Maps path and reads its directory (no member's data is read). */
dm_npz *dm_npz_open(const char *path);
void dm_npz_close(dm_npz *z); /* accepts NULL */
const char *dm_npz_path(const dm_npz *z);
/* 1 if dmica reads deflated members (built with zlib), else 0. */
int dm_npz_deflate_supported(void);

/* The arrays: members whose names end in ".npy", named without it, in
 * directory order. Other members are ignored. */
int dm_npz_count(const dm_npz *z);
const char *dm_npz_name(const dm_npz *z, int i);
/* The index of array name, or -1 (no error recorded). */
int dm_npz_find(const dm_npz *z, const char *name);
/* Array i's .npy header (dtype, shape), checked against the member's size as
 * dm_npy_parse checks a file (a deflated member: its first bytes inflated). */
int dm_npz_header(dm_npz *z, int i, dm_npy_header *h);
/* Array i whole, as float32 (f32, f16, bf16 or f64 stored), into out (numel
 * floats); the member's CRC-32 is checked (with zlib). Errors name the file
 * and the member. */
int dm_npz_read_f32(dm_npz *z, int i, float *out);

#endif
