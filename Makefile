# carseg — plain Makefile. Targets: all (lib + CLI), test, check (ASan+UBSan), bench, fuzz, deps, clean.
# Knobs: BUILD=dir (default build), DEBUG=1, NATIVE=1, MPI=1 (Open MPI build of the CLI), CC=clang.
# Layout: src/<layer>/*.c is the library, one folder per layer (util, image, clip, crf, car, eval,
# api); every tools/*.c goes into the CLI, every tests/*.c into run_tests (tests register
# themselves), every bench/*.c into build/bench, every fuzz/*.c into a fuzzer.
# Include rule: headers are included by bare name ("nn.h"); every layer folder is on the include
# path, so header names are unique across src/. (src/*.c is still picked up for files not yet
# moved into a layer.)

CC      ?= cc
BUILD   ?= build
CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Wshadow -Wno-unknown-pragmas -Wno-unused-parameter -Wno-format-truncation
OPT     := -O2 -g
ifeq ($(DEBUG),1)
OPT     := -O0 -g
endif
ifeq ($(NATIVE),1)
OPT     += -march=native
endif
LAYERS  := $(patsubst src/%/,%,$(sort $(dir $(wildcard src/*/*.c src/*/*.h))))
INC     := -Iinclude -Isrc $(addprefix -Isrc/,$(LAYERS))
CFLAGS  += $(CSTD) $(WARN) $(OPT) -fopenmp $(INC) $(EXTRA_CFLAGS)
LDLIBS  += -fopenmp -lopenblas -ljpeg -lpng -lz -lcurl -lcrypto -ltiff -lm -lpthread

ifeq ($(MPI),1)
CC      := mpicc
CFLAGS  += -DCARSEG_MPI=1
BUILD   := build-mpi
endif

LIB_SRC   := $(sort $(wildcard src/*.c src/*/*.c))
CLI_SRC   := $(sort $(wildcard tools/*.c))
TEST_SRC  := $(sort $(wildcard tests/*.c))
BENCH_SRC := $(sort $(wildcard bench/*.c))
FUZZ_SRC  := $(sort $(wildcard fuzz/*.c))

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ   := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ  := $(TEST_SRC:%.c=$(BUILD)/%.o)
BENCH_OBJ := $(BENCH_SRC:%.c=$(BUILD)/%.o)

.PHONY: all test check bench fuzz deps clean lint
all: $(BUILD)/libcarseg.a $(BUILD)/carseg

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libcarseg.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/carseg: $(CLI_OBJ) $(BUILD)/libcarseg.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libcarseg.a $(LDLIBS)

# the tests link the library objects directly (constructors in every object stay linked)
$(BUILD)/run_tests: $(TEST_OBJ) $(LIB_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(LIB_OBJ) $(LDLIBS)

# `make test` runs every C test; tests that need ../shared say SKIPPED when it is missing.
# T="name1 name2" runs only the tests whose names contain one of the words.
test: $(BUILD)/run_tests $(BUILD)/carseg
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} CARSEG_BIN=$(abspath $(BUILD)/carseg) $(BUILD)/run_tests $(T)

check:
	$(MAKE) BUILD=build/asan OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fsanitize=address,undefined" test

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/libcarseg.a
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libcarseg.a $(LDLIBS)

bench: $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%) $(BUILD)/carseg
	@for b in $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%); do echo "== $$b"; $$b || exit 1; done

fuzz:
	@mkdir -p $(BUILD)/fuzz
	@for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined $(INC) $$f $(LIB_SRC) \
	    -o $(BUILD)/fuzz/$$n -fopenmp=libgomp $(LDLIBS) || exit 1; echo "built $(BUILD)/fuzz/$$n"; done

deps:
	bash scripts/deps.sh

lint:
	cppcheck --quiet --enable=warning,performance --std=c11 $(INC) src tools

clean:
	rm -rf build build-mpi

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BENCH_OBJ:.o=.d)
