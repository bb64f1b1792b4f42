/*
 * corpus.h: documents from the files text corpora come in.
 *
 * A corpus is an ordered list of files (dm_corpus_list: one file, or the files
 * of one folder whose names match a glob, sorted by name). dm_corpus_next walks
 * them and hands out documents, in a fixed order:
 *
 *   .txt (and any other name)   the whole file is one document (text)
 *   .jsonl / .ndjson            one document per line: the string field
 *                               `text_field` of the line's JSON object; blank
 *                               lines are skipped; a line that is not JSON, or
 *                               lacks the field, is an error naming file and line
 *   .bin                        nanoGPT's token files: raw little-endian uint16
 *                               GPT-2 ids; documents end at each `eot` id (the
 *                               eot itself is not part of the document)
 *   .npy (1-D integer)          the same, for int32/int64/uint16/uint8 arrays
 *   compressed or archived      .gz .xz .zst .bz2 .lz4 .tar .tgz .zip ... (found
 *                               by magic bytes or name) are read with libarchive:
 *                               a compressed single file is read as the file it
 *                               compresses ("a.jsonl.gz" as a .jsonl); each
 *                               member of an archive is a document by the rules
 *                               above, by its own name; a member that is itself
 *                               compressed or archived (OpenWebText's release: a
 *                               .tar.xz of .xz archives of .txt files) is opened
 *                               in turn, up to 4 levels deep. Archive members are
 *                               taken in the order the archive stores them.
 * A format other than auto forces how every document source is read (a .jsonl
 * named .txt, say); compression is still detected. Empty documents are skipped.
 *
 * Memory: plain files are memory-mapped; an archive member is read whole into
 * memory (OpenWebText documents are a few KB; a multi-GB compressed .jsonl is
 * held whole while its lines are handed out). Token documents come out in
 * pieces of at most DM_CORPUS_PIECE ids (dm_doc.part counts them), so a
 * separator-free 1-D array of any length never needs more.
 *
 * Errors name the file, and the member or line: "c.tar.xz: docs/b.txt.gz:
 * corrupt or truncated data: ...", "d.jsonl:17: no string field 'text'".
 */
#ifndef DM_CORPUS_H
#define DM_CORPUS_H

#include "dm.h"

#define DM_CORPUS_PIECE (1 << 20) /* ids per token-document piece */

typedef enum {
    DM_CORPUS_AUTO = 0,
    DM_CORPUS_TXT,
    DM_CORPUS_JSONL,
    DM_CORPUS_BIN,
    DM_CORPUS_NPY,
} dm_corpus_format;

/* "auto", "txt", "jsonl", "bin", "npy"; -1 with dm_fail() otherwise. */
int dm_corpus_format_parse(const char *s, dm_corpus_format *out);

/*
 * The files of a corpus: path itself if it is a file (glob must then be ""),
 * or the regular files directly in folder path (not in subfolders; names
 * starting with '.' skipped) whose names match glob (fnmatch; "" = all),
 * sorted by name (strcmp: the same order in every locale). *files (yours:
 * dm_corpus_list_free) gets *n malloc'd paths. -1 with dm_fail() if path is
 * unreadable or nothing matches.
 */
int dm_corpus_list(const char *path, const char *glob, char ***files, int *n);
void dm_corpus_list_free(char **files, int n);

/* The format dm_corpus_next will use for a plain (not compressed) file under
 * `format`: auto resolves by the name's extension. */
dm_corpus_format dm_corpus_file_format(const char *path, dm_corpus_format format);

/* Whether path (by its name) may hold text, which needs a tokenizer: 0 for
 * .bin and .npy token files (compressed too), 1 otherwise. */
int dm_corpus_needs_tokenizer(const char *path, dm_corpus_format format);

typedef struct {
    int is_tokens;      /* 1: ids[0, n); 0: text[0, len) (any bytes) */
    const char *text;
    size_t len;
    const int32_t *ids; /* each in [0, 2^24) */
    size_t n;
    int64_t index;      /* document number in corpus order, from 0 */
    int part;           /* token documents: 0 for the first piece, then 1, 2, ... */
    const char *where;  /* "a.jsonl:17", "c.tar.xz: docs/b.txt" (for messages) */
} dm_doc;

typedef struct dm_corpus dm_corpus;

/* Reads files[0, nfiles) (copied) in order. eot ends documents in token files.
 * Never fails: errors come from dm_corpus_next. Free with dm_corpus_close. */
dm_corpus *dm_corpus_open(char *const *files, int nfiles, dm_corpus_format format,
                          const char *text_field, int32_t eot);
/* The next document into *doc (its memory valid until the next call): 1, or 0
 * at the end, or -1 with dm_fail(). */
int dm_corpus_next(dm_corpus *c, dm_doc *doc);
/* Skips the rest of the current token document (its further pieces). */
void dm_corpus_skip_rest(dm_corpus *c);
/* Documents handed out so far. */
int64_t dm_corpus_documents(const dm_corpus *c);
void dm_corpus_close(dm_corpus *c); /* accepts NULL */

#endif
