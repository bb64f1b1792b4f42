/*
 * test_base.c: engine/base on its own: sizes (dm_parse_size) with every way a
 * size can be wrong, each with a message that says what is wrong and what a
 * size looks like.
 */
#include <string.h>

#include "dm.h"
#include "test.h"

START_TEST(test_size_values)
{
    ck_assert_int_eq(dm_parse_size("512M"), 512LL << 20);
    ck_assert_int_eq(dm_parse_size("512k"), 512LL << 10);
    ck_assert_int_eq(dm_parse_size("1.5GiB"), 3LL << 29);
    ck_assert_int_eq(dm_parse_size("4TB"), 4LL << 40);
    ck_assert_int_eq(dm_parse_size("0"), 0); /* "none" where a caller allows it */
    ck_assert_int_eq(dm_parse_size("1"), 1);
    ck_assert_int_eq(dm_parse_size("1.9"), 1); /* a fraction of a byte is dropped */
    ck_assert_int_eq(dm_parse_size("9223372036854774784"), 9223372036854774784LL); /* the largest double below 2^63 */
    ck_assert_int_eq(dm_parse_size("8388607T"), 8388607LL << 40);
}
END_TEST

/* Each bad size fails with its own reason and the form sizes take; never an
 * empty message, never a double cast out of range. */
START_TEST(test_size_errors)
{
    static const struct {
        const char *text, *why;
    } bad[] = {
        {"", "an empty size"},
        {"lots", "invalid size 'lots' (not a number)"},
        {" 5", "invalid size ' 5'"},
        {"12X", "invalid size '12X' (unknown unit 'X')"},
        {"12MX", "invalid size '12MX' (unknown unit 'MX')"},
        {"-5", "'-5' is negative"},
        {"-1e-300", "is negative"},
        {"nan", "'nan' is not a number"},
        {"NaNM", "is not a number"},
        {"inf", "'inf' is too large (at most 8 EiB)"},
        {"-inf", "is negative"},
        {"1e30", "'1e30' is too large (at most 8 EiB)"},
        {"1e400", "too large"},
        {"99999999999T", "'99999999999T' is too large"},
        {"8388608T", "too large"}, /* exactly 2^63 */
        {"9223372036854775808", "too large"},
        {"0.0001", "'0.0001' is less than one byte"},
        {"1e-400", "less than one byte"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dm_error_clear();
        ck_assert_msg(dm_parse_size(bad[i].text) == -1, "'%s' accepted", bad[i].text);
        assert_error_has(bad[i].why);
        assert_error_has("sizes are a number with an optional unit K, M, G, T (powers of 1024), e.g. 512M");
        assert_error_code(DM_E_INPUT);
    }
}
END_TEST

static Suite *base_suite(void)
{
    Suite *s = suite_create("base");
    TCase *tc = tcase_create("base");
    tcase_add_test(tc, test_size_values);
    tcase_add_test(tc, test_size_errors);
    suite_add_tcase(s, tc);
    return s;
}

DM_TEST_MAIN(base_suite)
