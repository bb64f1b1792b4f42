/* fuzz.c: the helpers of fuzz.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "fuzz.h"
#include "dm.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef DM_FUZZ_SRCDIR
#define DM_FUZZ_SRCDIR "."
#endif

static char *dir;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *path) { nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static void cleanup(void)
{
    if (dir)
        rm_tree(dir);
}

const char *fz_dir(void)
{
    if (!dir) {
        const char *t = getenv("TMPDIR");
        char tmpl[PATH_MAX];
        snprintf(tmpl, sizeof tmpl, "%s/dmica-fuzz.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmpl)) {
            perror(tmpl);
            abort();
        }
        dir = strdup(tmpl);
        atexit(cleanup);
    }
    return dir;
}

char *fz_write(const char *name, const void *data, size_t n)
{
    char *path;
    if (asprintf(&path, "%s/%s", fz_dir(), name) < 0)
        abort();
    for (char *s = path + strlen(dir) + 1; (s = strchr(s, '/')); s++) {
        *s = 0;
        if (mkdir(path, 0777) && errno != EEXIST) {
            perror(path);
            abort();
        }
        *s = '/';
    }
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        perror(path);
        abort();
    }
    return path;
}

void fz_remove(const char *name)
{
    char *path;
    if (asprintf(&path, "%s/%s", fz_dir(), name) < 0)
        abort();
    rm_tree(path);
    free(path);
}

void fz_split(const uint8_t *data, size_t size, int n, const uint8_t **parts, size_t *lens)
{
    size_t sl = strlen(FZ_SEP);
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; k < n - 1 && i + sl <= size; i++)
        if (!memcmp(data + i, FZ_SEP, sl)) {
            parts[k] = data + start, lens[k] = i - start, k++;
            start = i + sl;
            i += sl - 1;
        }
    parts[k] = data + start, lens[k] = size - start, k++;
    for (; k < n; k++)
        parts[k] = data + size, lens[k] = 0;
}

const char *fz_src(const char *rel)
{
    static char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s/%s", DM_FUZZ_SRCDIR, rel);
    return buf;
}

void fz_end(void)
{
    static int debug = -1;
    if (debug < 0)
        debug = getenv("FZ_DEBUG") != NULL;
    if (debug)
        fprintf(stderr, "fuzz: %s\n", dm_error_code() ? dm_error() : "accepted");
    dm_error_clear();
}

int fz_valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n)
            return 0;
        unsigned cp = k == 1 ? c : c & (0x7f >> k);
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k;
    }
    return 1;
}
