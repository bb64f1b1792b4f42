/*
 * fuzz.h: what the fuzz harnesses share (docs/fuzzing.md).
 *
 * Each harness defines LLVMFuzzerTestOneInput, the entry point of libFuzzer
 * (https://llvm.org/docs/LibFuzzer.html): built with clang -fsanitize=fuzzer it
 * is fuzzed (`make fuzz`); linked with replay.c (gcc, ASan/UBSan) it is run
 * once on every saved input (`make fuzz-replay`, part of `make test`).
 *
 * Parsers that take a path get the input written to a file in a folder of this
 * process (fz_dir), removed when the process exits normally.
 */
#ifndef DM_FUZZ_H
#define DM_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The folder of this process, made on first use ($TMPDIR or /tmp). */
const char *fz_dir(void);
/* Writes data to fz_dir()/name (name may contain '/': folders are made);
 * returns the path (malloc'd). Aborts if the file cannot be written: that is
 * the machine's fault, not the input's. */
char *fz_write(const char *name, const void *data, size_t n);
/* Removes fz_dir()/name and everything under it (no error if absent). */
void fz_remove(const char *name);

/* Splits data at each FZ_SEP into at most n parts: parts[i], lens[i]; parts
 * that the input does not have are empty. Several files (vocab.json,
 * merges.txt, text) come from one input this way. */
#define FZ_SEP "\n#####\n"
void fz_split(const uint8_t *data, size_t size, int n, const uint8_t **parts, size_t *lens);

/* Ends an input: with FZ_DEBUG set in the environment prints the error the
 * parser recorded (to see how far inputs get), then clears it. */
void fz_end(void);

/* 1 if s[0, n) is valid UTF-8 (strict: no overlongs, surrogates or code points
 * past U+10FFFF): the texts a tokenizer must decode back unchanged. */
int fz_valid_utf8(const unsigned char *s, size_t n);

/* Path of a file in the source tree (DM_FUZZ_SRCDIR, set by the Makefile). */
const char *fz_src(const char *rel);

#endif
