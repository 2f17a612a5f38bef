/* test_api.c — the public API: the ABI version the library reports is the header's. */
#include "carseg.h"
#include "check.h"

TEST(api_abi_version_matches_header) {
    CHECK(carseg_abi_version() == CARSEG_ABI_VERSION);
    CHECK(CARSEG_ABI_VERSION >= 1);
}
