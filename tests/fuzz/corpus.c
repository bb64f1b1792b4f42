/*
 * corpus.c: fuzzes the readers of text corpora (io/corpus.c): plain text,
 * .jsonl lines and their text field, nanoGPT .bin token files, 1-D .npy token
 * arrays, and what libarchive opens (compressed files, archives, archives in
 * archives).
 *
 * The input's first byte picks the file's name (so its extension) and the
 * second the format (auto, txt, jsonl, bin, npy); the rest is the file. Every
 * document is read through.
 */
#include "fuzz.h"
#include "corpus.h"

#include <stdlib.h>

static const char *const names[] = {
    "c.txt", "c.jsonl", "c.ndjson", "c.bin",  "c.npy",      "c.gz",   "c.xz",     "c.zst", "c.bz2",
    "c.tar", "c.tgz",   "c.zip",    "c.lz4",  "c.jsonl.gz", "c.bin.xz", "c.tar.xz", "c",     "c.md",
};
#define NNAMES (sizeof names / sizeof names[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *name = names[data[0] % NNAMES];
    dm_corpus_format fmt = data[1] % 8 <= DM_CORPUS_NPY ? (dm_corpus_format)(data[1] % 8) : DM_CORPUS_AUTO;
    char *path = fz_write(name, data + 2, size - 2);
    dm_corpus_file_format(path, fmt);
    dm_corpus_needs_tokenizer(path, fmt);
    dm_corpus *c = dm_corpus_open(&path, 1, fmt, "text", 50256);
    dm_doc doc;
    volatile unsigned sum = 0;
    int r;
    while ((r = dm_corpus_next(c, &doc)) == 1) {
        if (doc.is_tokens) {
            for (size_t i = 0; i < doc.n; i++) {
                if (doc.ids[i] < 0 || doc.ids[i] >= (1 << 24))
                    abort(); /* corpus.h: each id in [0, 2^24) */
                sum += (unsigned)doc.ids[i];
            }
        } else {
            if (!doc.len)
                abort(); /* empty documents are skipped */
            for (size_t i = 0; i < doc.len; i++)
                sum += (unsigned char)doc.text[i];
        }
        sum += (unsigned)doc.where[0];
    }
    (void)sum;
    dm_corpus_documents(c);
    dm_corpus_close(c);
    fz_remove(name);
    fz_end();
    free(path);
    return 0;
}
