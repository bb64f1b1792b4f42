/*
 * safetensors.h: reading Hugging Face safetensors files (GPT-2 weights, SAE
 * weights, golden test data).
 *
 * Format (https://github.com/huggingface/safetensors): 8 bytes little-endian
 * header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
 *    "__metadata__": {"format": "pt"}}
 * (often padded with spaces to a multiple of 8), then the data; offsets count
 * from the end of the header.
 *
 * dm_st_open maps the file and validates everything before any tensor is used:
 * the header length against the file size, the JSON, every dtype (one of the
 * safetensors names), shape and data_offsets (begin <= end, end inside the data,
 * end - begin == numel * dtype size), and duplicate names. A "transformer."
 * prefix (GPT2Model saved inside GPT2LMHeadModel) is stripped from every name.
 * Overlapping tensors are not rejected (the format forbids them, but they do no
 * harm to a reader).
 *
 * Only F32, F16 and BF16 tensors can be read as numbers (dm_st_read_f32); other
 * dtypes are parsed so their offsets are checked, and rejected by name when read.
 * Errors name the file and the tensor.
 */
#ifndef DM_SAFETENSORS_H
#define DM_SAFETENSORS_H

#include "dm.h"

#define DM_ST_MAX_DIMS 8

typedef struct {
    const char *name;  /* prefix stripped; owned by the file handle */
    const char *dtype; /* as written in the file: "F32", "BF16", "I64", ... */
    int ndim;
    int64_t shape[DM_ST_MAX_DIMS];
    int64_t numel;
    int64_t nbytes;
    const void *data; /* into the mapping; not necessarily aligned */
} dm_st_tensor;

typedef struct dm_safetensors dm_safetensors;

/* Maps and validates path. NULL with dm_fail() ("m/model.safetensors: header
 * length 9000 exceeds the file (1024 bytes)"). Free with dm_st_close. */
dm_safetensors *dm_st_open(const char *path);
void dm_st_close(dm_safetensors *st); /* accepts NULL */

const char *dm_st_path(const dm_safetensors *st);
/* Tensors in name order: i in [0, dm_st_count). */
int dm_st_count(const dm_safetensors *st);
const dm_st_tensor *dm_st_at(const dm_safetensors *st, int i);
/* The tensor called name (without prefix), or NULL (no error recorded). */
const dm_st_tensor *dm_st_find(const dm_safetensors *st, const char *name);
/* A string value of __metadata__, or NULL. Owned by st. */
const char *dm_st_metadata(const dm_safetensors *st, const char *key);

/* 1 if t's dtype is F32, F16 or BF16. */
int dm_st_is_float(const dm_st_tensor *t);
/* Converts all of t into out (t->numel floats). -1 with dm_fail() naming the
 * file and tensor if the dtype is not F32, F16 or BF16. */
int dm_st_read_f32(const dm_safetensors *st, const dm_st_tensor *t, float *out);
/* Formats t's shape as "[64, 192]" into buf (always NUL-terminated). */
const char *dm_st_shape_str(const int64_t *shape, int ndim, char *buf, size_t n);

/* Writes float32 tensors (names[i], ts[i], F32 data) as a safetensors file,
 * atomically, with __metadata__ {"format": "pt"} as PyTorch's writer does. */
int dm_st_write_f32(const char *path, const char *const *names, const dm_tensor *ts, int n);

#endif
