# carseg — plain Makefile. Targets: all (libraries + CLI), test, check (ASan+UBSan), install,
# layers, bench, fuzz, deps, clean.
# Knobs: BUILD=dir (default build), DEBUG=1, NATIVE=1, MPI=1 (Open MPI build of the CLI), CC=clang,
# NO_CURL=1 (no downloader, no libcurl),
# PREFIX=/usr/local and DESTDIR= (install).
# Layout: src/<layer>/*.c is the library, one folder per layer (util, image, clip, crf, car, sam,
# eval, api); every tools/*.c goes into the CLI, every tests/*.c into run_tests (tests register
# themselves), every bench/*.c into build/bench, every fuzz/*.c into a fuzzer.
# Libraries: build/libcarseg.so (soname libcarseg.so.1) and build/libcarseg.a are the public
# library: the core layers, compiled -fPIC -fvisibility=hidden (include/carseg.h marks its own
# declarations visible), so only carseg_* is exported; the static one is one relocatable object
# whose hidden symbols are made local (a user's program may define read_file or json_parse).
# The evaluation data code (datasets, REFER annotations, journal, label files: EVAL_SRC) is not in
# the public library. build/libcarseg_internal.a holds every library object with its internal
# symbols global: what the CLI links (the tests link the objects themselves). The benchmarks are
# public-API programs: include/carseg.h only, linked against build/libcarseg.so.
# Include rule: headers are included by bare name ("nn.h"); every layer folder is on the include
# path, so header names are unique across src/.

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
LDLIBS  += -fopenmp -lopenblas -ljpeg -lpng -lz $(CURL_LIBS) -ltiff -lm -lpthread
# NO_CURL=1: no downloader (no libcurl): model names resolve in the cache only; a download request
# is an error saying the build has none. (sha256 is carseg's own: no OpenSSL either way.)
CURL_LIBS := -lcurl
ifeq ($(NO_CURL),1)
CFLAGS  += -DCARSEG_NO_CURL
CURL_LIBS :=
endif

ifeq ($(MPI),1)
CC      := mpicc
CFLAGS  += -DCARSEG_MPI=1
BUILD   := build-mpi
endif

LIB_SRC   := $(sort $(wildcard src/*.c src/*/*.c))
# tool-private evaluation code (the CLI's `eval` and `segment` journal): not in the public library
EVAL_SRC  := $(filter-out src/eval/eval.c,$(wildcard src/eval/*.c))
CORE_SRC  := $(filter-out $(EVAL_SRC),$(LIB_SRC))
CLI_SRC   := $(sort $(wildcard tools/*.c))
# the tests run in the order of the pipeline (their constructors register them in link order):
# the utilities and images, the tokenizer and the kernels, the CLIP engine, the method's stages, the
# method, SAM, evaluation, the public API and the programs; a test file not named here runs last
TEST_ORDER := main util image imgproc tokenizer weights nn gemm_f32 gemm_amx clip clip_api prompts \
              presets cam classify crf car car_oracle sam sam_amg sam_cli carsam eval label models \
              api header examples build
TEST_FIRST := $(foreach t,$(TEST_ORDER),$(wildcard tests/$(if $(filter main,$(t)),main,test_$(t)).c))
TEST_SRC  := $(TEST_FIRST) $(filter-out $(TEST_FIRST),$(sort $(wildcard tests/*.c)))
BENCH_SRC := $(sort $(wildcard bench/*.c))
FUZZ_SRC  := $(sort $(wildcard fuzz/*.c))

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
CORE_OBJ  := $(CORE_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ   := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ  := $(TEST_SRC:%.c=$(BUILD)/%.o)
BENCH_OBJ := $(BENCH_SRC:%.c=$(BUILD)/%.o)

VERSION   := $(shell sed -n 's/^\#define CARSEG_VERSION "\(.*\)"/\1/p' include/carseg.h)
SOVERSION := $(or $(shell sed -n 's/^\#define CARSEG_ABI_VERSION \([0-9][0-9]*\).*/\1/p' include/carseg.h),1)
SONAME    := libcarseg.so.$(SOVERSION)
LIB_CFLAGS := -fPIC -fvisibility=hidden
PUBLIC_LIBS := $(BUILD)/libcarseg.a $(BUILD)/libcarseg.so

.PHONY: all libs test check bench fuzz deps clean lint install layers test-serve python test-python test-docs
all: libs $(BUILD)/carseg
libs: $(PUBLIC_LIBS)

# objects are rebuilt when the compiler or its flags change (the stamp holds the command line)
FLAGS_STAMP := $(BUILD)/.flags
$(shell mkdir -p $(BUILD) && echo '$(CC) $(CFLAGS) $(LIB_CFLAGS)' | cmp -s - $(FLAGS_STAMP) || \
  echo '$(CC) $(CFLAGS) $(LIB_CFLAGS)' > $(FLAGS_STAMP))

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# library objects: position independent, everything but carseg.h's declarations hidden
$(BUILD)/src/%.o: src/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -MMD -MP -c $< -o $@

# the shared library: exports exactly the default-visibility (carseg.h) symbols
$(BUILD)/libcarseg.so.$(VERSION): $(CORE_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,--no-undefined -o $@ $^ $(LDLIBS)
$(BUILD)/libcarseg.so: $(BUILD)/libcarseg.so.$(VERSION)
	ln -sf libcarseg.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $@

# the static library: one relocatable object, hidden symbols made local, so only carseg_* is
# global (a program defining its own read_file, set_err or json_parse still links)
$(BUILD)/libcarseg.a: $(CORE_OBJ)
	$(LD) -r -o $(BUILD)/libcarseg_all.o $^
	objcopy --localize-hidden $(BUILD)/libcarseg_all.o
	@rm -f $@
	ar rcs $@ $(BUILD)/libcarseg_all.o

# every library object, internal symbols global: what the CLI links (it holds the evaluation code,
# which the public library leaves out)
$(BUILD)/libcarseg_internal.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/carseg: $(CLI_OBJ) $(BUILD)/libcarseg_internal.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libcarseg_internal.a $(LDLIBS) $(SERVE_LIBS)

# `carseg serve` (tools/serve*.c): libmicrohttpd, and the demo page tools/serve_page.html compiled
# in as the bytes of a C array (od + sed: no generator program)
SERVE_LIBS := -lmicrohttpd
$(BUILD)/gen/serve_page.h: tools/serve_page.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from tools/serve_page.html by the Makefile: do not edit */'; \
	  echo 'static const char SERVE_PAGE[] = {'; \
	  od -An -v -tx1 $< | sed -e 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '0};'; } > $@.tmp && mv $@.tmp $@
$(BUILD)/tools/serve_http.o: $(BUILD)/gen/serve_page.h
$(BUILD)/tools/serve_http.o: CFLAGS += -I$(BUILD)/gen

# the service's end-to-end tests (tests/serve/): the HTTP API against the CLI, concurrency,
# hostile clients, and the page in headless Chromium (skipped when /usr/bin/chromium is absent)
test-serve: $(BUILD)/carseg
	CARSEG_BIN=$(abspath $(BUILD)/carseg) CARSEG_BUILD_DIR=$(abspath $(BUILD)) \
	  /usr/bin/python3 tests/serve/test_serve.py

# the Python package (python/carseg, ctypes over the public API): `make python` puts the shared
# library beside it; `make test-python` installs the package offline into a fresh venv that sees
# Debian's NumPy (--system-site-packages) and runs tests/python against the installed copy
python: $(BUILD)/libcarseg.so
	cp -L $(BUILD)/$(SONAME) python/carseg/$(SONAME)

PYVENV := $(BUILD)/pyvenv
test-python: python $(BUILD)/carseg
	rm -rf $(PYVENV) python/build python/carseg.egg-info
	/usr/bin/python3 -m venv --system-site-packages $(PYVENV)
	$(PYVENV)/bin/pip install -q --no-build-isolation --no-index ./python
	rm -rf python/build python/carseg.egg-info
	cd tests/python && OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} CARSEG_TEST_INSTALLED=1 \
	  $(abspath $(PYVENV))/bin/python -m pytest -q -p no:cacheprovider .

# the documentation: first lines, relative links, and the README's commands run as written
# (scripts/test_docs.py; the fixture models stand in for the real ones under their names)
test-docs: python $(BUILD)/carseg
	/usr/bin/python3 scripts/test_docs.py

# the tests link the library objects directly (constructors in every object stay linked)
$(BUILD)/run_tests: $(TEST_OBJ) $(LIB_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(LIB_OBJ) $(LDLIBS)

# `make test` runs every C test; tests that need ../shared say SKIPPED when it is missing.
# T="name1 name2" runs only the tests whose names contain one of the words.
# tests/test_build.c reads CARSEG_BUILD_DIR, CARSEG_CC, CARSEG_LDLIBS, CARSEG_LDFLAGS and
# CARSEG_INSTALL_ENV: it links small programs against the built and the installed libraries.
test: $(BUILD)/run_tests $(BUILD)/carseg $(PUBLIC_LIBS)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} CARSEG_BIN=$(abspath $(BUILD)/carseg) \
	  CARSEG_BUILD_DIR=$(abspath $(BUILD)) CARSEG_CC="$(CC)" CARSEG_LDLIBS="$(LDLIBS)" \
	  CARSEG_LDFLAGS="$(LDFLAGS)" CARSEG_INSTALL_ENV='$(INSTALL_ENV)' $(BUILD)/run_tests $(T)

# make install PREFIX=/usr/local [DESTDIR=staging] [LIBDIR=$(PREFIX)/lib]: include/carseg.h,
# libcarseg.a, libcarseg.so(.1, .VERSION), LIBDIR/pkgconfig/carseg.pc (Libs.private: what a
# static link needs), bin/carseg, share/man/man1/carseg.1
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
LIBS_PRIVATE := $(patsubst -fopenmp,-lgomp,$(LDLIBS))
INSTALL_ENV = VERSION=$(VERSION) SONAME=$(SONAME) LIBS_PRIVATE="$(LIBS_PRIVATE)"
install: all
	$(INSTALL_ENV) sh scripts/install.sh $(BUILD) $(PREFIX) "$(DESTDIR)" $(LIBDIR)

# the layer rule (util < image < clip < crf < car < sam < eval < api) on the includes and, at link
# level, on the objects (no use of a higher layer, no cycle among objects)
layers: $(LIB_OBJ)
	/usr/bin/python3 scripts/check_layers.py $(BUILD)

check:
	$(MAKE) BUILD=build/asan OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fsanitize=address,undefined" test

# the benchmarks use the public API alone: compiled with include/ (and bench/) as the only project
# include path, linked against the shared library as the examples are (rpath: build/), plus
# OpenBLAS for bench_clip's sgemm ceiling; scripts/check_layers.py refuses any other header
BENCH_CFLAGS := $(CSTD) $(WARN) $(OPT) -fopenmp -Iinclude -Ibench $(EXTRA_CFLAGS)
$(BUILD)/bench/%.o: bench/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -MMD -MP -c $< -o $@

.SECONDARY: $(BENCH_OBJ)
$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/libcarseg.so
	$(CC) $(BENCH_CFLAGS) $(LDFLAGS) -o $@ $< -L$(BUILD) -Wl,-rpath,'$$ORIGIN/..' -lcarseg -lopenblas -lm

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
