/*
 * test_gpu.c: the GPU library (gpu/, engine/base/device.h) from the CPU side.
 *
 * Where there is no GPU (or no driver, or dmica was built without nvcc):
 * `--device cuda` runs on the CPU after a one-line notice, never fails, and
 * every family's table gives its CPU entry; then the program reports the GPU
 * tests skipped (exit 77, `make test` prints "skipped"). Where there is one:
 * the "cuda" entries are chosen for DM_DEVICE_CUDA, and the kernel tests
 * (test_stats.c's and test_fastica.c's backends_match_reference, which list the
 * "cuda" entry when it is there) compare them with the reference kernels.
 */
#include "compute.h"
#include "device.h"
#include "dm.h"
#include "fastica.h"
#include "sae.h"
#include "stats.h"
#include "test.h"

#include <string.h>

static int have_gpu(char *why, int len) { return dm_cuda_available(NULL, 0, why, len); }

START_TEST(device_choice)
{
    char why[512], note[600];
    int gpu = have_gpu(why, (int)sizeof why);
    ck_assert_int_eq(dm_compute_set_device("cpu", note, (int)sizeof note), 0);
    ck_assert_int_eq(dm_compute_default()->device, DM_DEVICE_CPU);
    ck_assert_str_eq(note, "");
    ck_assert_ptr_eq(dm_stats_backend_for(dm_compute_default()), &dm_stats_backend_cpu);
    ck_assert_int_eq(dm_compute_set_device("tpu", note, (int)sizeof note), -1);
    ck_assert_int_eq(dm_compute_set_device("cuda", note, (int)sizeof note), 0);
    if (!gpu) {
        /* no GPU: the CPU, and a notice that says why */
        ck_assert_int_eq(dm_compute_default()->device, DM_DEVICE_CPU);
        ck_assert_msg(strstr(note, "device cuda: ") && strstr(note, "running on the CPU"), "note: %s", note);
        ck_assert_ptr_null(dm_stats_backend_cuda());
        ck_assert_ptr_null(dm_ica_backend_cuda());
        ck_assert_ptr_null(dm_sae_backend_cuda());
        ck_assert_ptr_eq(dm_sae_backend_for(dm_compute_default()), &dm_sae_backend_cpu);
        ck_assert_ptr_eq(dm_stats_backend_for(dm_compute_default()), &dm_stats_backend_cpu);
        ck_assert_ptr_eq(dm_ica_backend_for(dm_compute_default()), &dm_ica_backend_cpu);
        ck_assert_int_eq(dm_compute_set_device("auto", note, (int)sizeof note), 0);
        ck_assert_int_eq(dm_compute_default()->device, DM_DEVICE_CPU);
        ck_assert_str_eq(note, ""); /* auto says nothing when it picks the CPU */
    } else {
        ck_assert_int_eq(dm_compute_default()->device, DM_DEVICE_CUDA);
        ck_assert_ptr_nonnull(dm_stats_backend_cuda());
        ck_assert_str_eq(dm_stats_backend_for(dm_compute_default())->name, "cuda");
        ck_assert_str_eq(dm_ica_backend_for(dm_compute_default())->name, "cuda");
        ck_assert_str_eq(dm_sae_backend_for(dm_compute_default())->name, "cuda");
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gpu");
    TCase *tc = tcase_create("device");
    tcase_add_test(tc, device_choice);
    suite_add_tcase(s, tc);
    int rc = dm_test_run(s, NULL);
    char why[512];
    /* asked after the forked cases: CUDA must not start before a fork */
    if (rc == 0 && !have_gpu(why, (int)sizeof why)) {
        printf("skipped: the GPU tests: %s\n", why);
        return 77;
    }
    return rc;
}
