/*
 * sae_cfg.c: fuzzes the reader of an SAE's cfg.json (dm_sae_read_config in
 * operators/kernels/sae.c): types of every key, nesting in "metadata"/"meta",
 * old key names, architectures and normalisations.
 */
#include "fuzz.h"
#include "sae.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *path = fz_write("sae/cfg.json", data, size);
    char *dir = strdup(path);
    *strrchr(dir, '/') = 0;
    dm_sae_config cfg;
    if (dm_sae_read_config(dir, &cfg) == 0) {
        /* What the engine does with a config it accepted. */
        if (cfg.d_in <= 0 || cfg.d_sae <= 0 || !cfg.hook_name || !cfg.model_name || !cfg.dataset_path)
            abort();
        dm_sae_arch_name(cfg.arch);
        dm_sae_norm_name(cfg.norm);
        dm_sae_check_input(&cfg, dir, "blocks.0.hook_resid_pre", cfg.d_in);
        dm_sae_check(dir, &cfg); /* no weights here: an error naming the file */
        dm_sae_config_free(&cfg);
    }
    if (dm_sae_settings(dir, &cfg) == 0)
        dm_sae_config_free(&cfg);
    fz_end();
    free(dir);
    free(path);
    return 0;
}
