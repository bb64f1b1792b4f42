/*
 * device.c: opens libdmica-cuda.so with dlopen (device.h).
 */
#include "device.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_abi.h"

static struct {
    int tried, ok, count;
    void *lib;
    char name[256];
    char why[512];
} cu;

static void *try_open(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h && !cu.why[0]) /* the first failure says most: a missing libcudart, say */
        snprintf(cu.why, sizeof cu.why, "%s", dlerror());
    return h;
}

static void open_library(void)
{
    cu.tried = 1;
    const char *env = getenv("DMICA_CUDA_LIB");
    if (env && *env) {
        cu.lib = try_open(env);
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = 0;
            char *slash = strrchr(exe, '/');
            if (slash)
                *slash = 0;
            const char *rel[] = {"libdmica-cuda.so", "../build/libdmica-cuda.so", "../libdmica-cuda.so"};
            for (size_t i = 0; i < sizeof rel / sizeof *rel && !cu.lib; i++) {
                char path[PATH_MAX + 64];
                snprintf(path, sizeof path, "%s/%s", exe, rel[i]);
                if (access(path, R_OK) == 0)
                    cu.lib = try_open(path);
            }
        }
        if (!cu.lib)
            cu.lib = try_open("libdmica-cuda.so");
    }
    if (!cu.lib) {
        if (!cu.why[0])
            snprintf(cu.why, sizeof cu.why, "libdmica-cuda.so not found (dmica built without nvcc?)");
        return;
    }
    dm_cuda_abi_fn abi = (dm_cuda_abi_fn)dlsym(cu.lib, "dm_cuda_abi");
    dm_cuda_probe_fn probe = (dm_cuda_probe_fn)dlsym(cu.lib, "dm_cuda_probe");
    if (!abi || !probe || abi() != DM_CUDA_ABI) {
        snprintf(cu.why, sizeof cu.why, "libdmica-cuda.so is of another dmica build (interface %d, expected %d)",
                 abi ? abi() : -1, DM_CUDA_ABI);
        return;
    }
    cu.count = probe(cu.name, (int)sizeof cu.name);
    if (cu.count <= 0) {
        snprintf(cu.why, sizeof cu.why, "no CUDA device (or no driver) on this machine");
        return;
    }
    cu.ok = 1;
}

int dm_cuda_available(char *name, int len, char *why, int why_len)
{
    if (!cu.tried)
        open_library();
    if (cu.ok && name && len > 0)
        snprintf(name, (size_t)len, "%s", cu.name);
    if (!cu.ok && why && why_len > 0)
        snprintf(why, (size_t)why_len, "%s", cu.why);
    return cu.ok;
}

void *dm_cuda_sym(const char *symbol)
{
    return dm_cuda_available(NULL, 0, NULL, 0) ? dlsym(cu.lib, symbol) : NULL;
}

int dm_cuda_fill(const char *symbol, const void *fallback, void *out)
{
    dm_cuda_backend_fn fill = (dm_cuda_backend_fn)dm_cuda_sym(symbol);
    return fill && fill(fallback, out) == 0;
}

void dm_device_hint_push(const void *host, const void *dev, size_t bytes)
{
    static void (*push)(const void *, const void *, size_t);
    if (!push && cu.ok)
        push = (void (*)(const void *, const void *, size_t))dlsym(cu.lib, "dm_cuda_hint_push");
    if (push)
        push(host, dev, bytes);
}

void dm_device_hint_pop(void)
{
    static void (*pop)(void);
    if (!pop && cu.ok)
        pop = (void (*)(void))dlsym(cu.lib, "dm_cuda_hint_pop");
    if (pop)
        pop();
}
