/*
 * replay.c: runs a harness once on every file named, or in a folder named, on
 * the command line (sorted, so a failure is reproducible), and stops at the
 * first crash as libFuzzer would. Linked with gcc -fsanitize=address,undefined
 * it needs no clang: this is how `make test` replays tests/fuzz/corpus and
 * tests/fuzz/crashes (docs/fuzzing.md).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;)
        if ((n += r) == cap)
            buf = realloc(buf, cap *= 2);
    fclose(f);
    if (!buf)
        return -1;
    /* An exact-size copy, so that ASan sees a read past the input's end. */
    uint8_t *in = malloc(n ? n : 1);
    memcpy(in, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(in, n);
    free(in);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }
static int visible(const struct dirent *d) { return d->d_name[0] != '.'; }

int main(int argc, char **argv)
{
    int files = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st)) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (replay_file(argv[i]))
                return 1;
            files++;
            continue;
        }
        struct dirent **ents;
        int n = scandir(argv[i], &ents, visible, by_name);
        if (n < 0) {
            perror(argv[i]);
            return 1;
        }
        for (int k = 0; k < n; k++) {
            char *p;
            if (asprintf(&p, "%s/%s", argv[i], ents[k]->d_name) < 0 || stat(p, &st))
                return 1;
            if (S_ISREG(st.st_mode)) {
                if (replay_file(p))
                    return 1;
                files++;
            }
            free(p);
            free(ents[k]);
        }
        free(ents);
    }
    printf("%s: %d inputs replayed\n", argv[0], files);
    return 0;
}
