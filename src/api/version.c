/* version.c — the ABI version the library was built with (see CARSEG_ABI_VERSION in carseg.h). */
#include "carseg.h"

int carseg_abi_version(void) { return CARSEG_ABI_VERSION; }
