/*
 * spill.h: spill files, the engine's on-disk form of a stream.
 *
 * A spill named NAME in folder DIR is two files:
 *   DIR/NAME.spill  the chunks, back to back, each stored as dtype and codec
 *                   (none or zstd): an f32 stream as f32, f16 or bf16; an i32 or
 *                   i64 stream as itself, exactly
 *   DIR/NAME.json   the manifest: format version, rows, cols, dtype, codec, and
 *                   per chunk {row0, rows, offset, bytes, raw_bytes, xxh64 of the
 *                   stored bytes}
 * The manifest is written last (temporary name, fsync, rename), so a spill
 * without a manifest is incomplete and is never read. The caller makes DIR
 * visible as a whole (see fs.h) once every spill in it is closed.
 *
 * Writes go through io_uring when the kernel allows it (write-behind: a chunk is
 * converted/compressed into one of a few buffers and submitted; the call returns
 * before it reaches the disk), else through pwrite. Replay of zstd chunks reads
 * ahead the same way; uncompressed chunks are read with pread straight into the
 * caller's buffer, the kernel reading ahead (one copy instead of two).
 * DMICA_NO_URING=1 forces the plain path (tests use it).
 * Every chunk's checksum is verified when read: a mismatch is an error that
 * names the file and chunk, never silently used.
 * DMICA_SPILL_MAX_IO=N (tests) cuts every io_uring transfer to N bytes, so the
 * resubmission of short reads and writes runs on small spills.
 */
#ifndef DM_SPILL_H
#define DM_SPILL_H

#include "dm.h"

typedef enum { DM_CODEC_NONE = 0, DM_CODEC_ZSTD } dm_codec;
int dm_codec_parse(const char *s, dm_codec *out); /* "none", "zstd" */
const char *dm_codec_name(dm_codec c);

typedef struct dm_spill_writer dm_spill_writer;
/* stored: DM_F32, DM_F16 or DM_BF16 for a stream of f32 values; DM_I32 or
 * DM_I64 for a stream of that dtype. Creates dir if needed and removes an old
 * DIR/NAME.json at once (so old manifest and new data never pair up). */
dm_spill_writer *dm_spill_writer_open(const char *dir, const char *name, int64_t cols,
                                      dm_dtype stored, dm_codec codec);
/* Converts (and compresses) c into an internal buffer and queues the write
 * (c->dtype must be the stream's: f32 for stored f32/f16/bf16);
 * c may be reused as soon as this returns. Chunks must arrive in row order: the
 * first may start at any row0, each later one where the previous ended. Chunks
 * of 0 rows are ignored. After a failure every later call fails too. */
int dm_spill_write(dm_spill_writer *w, const dm_chunk *c);
/* Waits for all writes, fsyncs, writes the manifest. Frees w (also on error). */
int dm_spill_writer_close(dm_spill_writer *w);
void dm_spill_writer_abort(dm_spill_writer *w); /* removes both files; accepts NULL */
int64_t dm_spill_writer_bytes(const dm_spill_writer *w); /* stored bytes so far */

typedef struct dm_spill_reader dm_spill_reader;
/* Reads and checks the manifest (and that the data file is as long as it says). */
dm_spill_reader *dm_spill_reader_open(const char *dir, const char *name);
void dm_spill_reader_close(dm_spill_reader *r);
int64_t dm_spill_rows(const dm_spill_reader *r);
int64_t dm_spill_row0(const dm_spill_reader *r); /* the first chunk's row0 */
int64_t dm_spill_cols(const dm_spill_reader *r);
int64_t dm_spill_nchunks(const dm_spill_reader *r);
int64_t dm_spill_max_chunk_rows(const dm_spill_reader *r);
/* Sequential replay: the next chunk into out->ptr (room for max_chunk_rows x
 * cols values of the stream's dtype, owned by the caller), out->dtype set to
 * it (f32 for a spill stored as f16 or bf16); out->rows = 0 at the end. */
int dm_spill_next(dm_spill_reader *r, dm_chunk *out);
int dm_spill_rewind(dm_spill_reader *r);
/* Random access (mmap): rows [row0, row0+rows) as values of the stream's
 * dtype, numbered as the chunks were (from the first chunk's row0). */
int dm_spill_read_rows(dm_spill_reader *r, int64_t row0, int64_t rows, void *out);
/* The dtype of the stream: f32 (stored as f32, f16 or bf16), i32 or i64. */
dm_dtype dm_spill_dtype(const dm_spill_reader *r);
/* Verifies every chunk's checksum without decoding (for `dmica plan --verify`). */
int dm_spill_verify(const char *dir, const char *name);

#endif
