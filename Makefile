# dmica: `make` builds bin/dmica; `make demo` runs the embedded default pipeline,
# then pipelines/demo-overcomplete.yaml (RICA beside FastICA);
# `make test` runs every test (unit tests, command-line tests, then the unit tests
# again under AddressSanitizer and UndefinedBehaviorSanitizer); `make bench` runs
# the benchmarks into docs/benchmarks.md.

BUILD   ?= build
SAN     ?=
CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-format-truncation -fopenmp
LDLIBS  := -lopenblas -llapacke -luring -lzstd -lyaml -ljansson -lxxhash -lpcre2-8 -larchive -lm -lpthread
TESTLIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm)

ifneq ($(SAN),)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

# MPI (engine/core/dist.c): with Open MPI's mpicc on the PATH, dist.c is built
# against Open MPI (DM_MPI=1) and everything links libmpi; without it (or with
# MPI=0), dist.c is a stub for one process. Either binary runs as one plain
# process: MPI is initialised only under a launcher (dm_dist_init). Only dist.c
# sees mpi.h and DM_MPI, so switching rebuilds dist.o (through $(MPI_STAMP))
# and relinks, nothing else.
ifeq ($(origin MPI),undefined)
MPI     := $(if $(shell command -v mpicc 2>/dev/null),1,0)
endif
ifeq ($(MPI),1)
MPI_CFLAGS := -DDM_MPI=1 $(shell mpicc --showme:compile)
LDLIBS  += $(shell mpicc --showme:link)
endif
MPI_STAMP := $(BUILD)/.mpi-$(MPI)

# zlib (io/npz.c): deflated members of .npz archives (numpy.savez_compressed)
# and the members' CRC-32 checks. Where zlib.h is found (zlib1g-dev, which
# tools/install-deps installs) npz.c is built with DM_ZLIB=1 and everything
# links -lz; without it (or with ZLIB=0) stored members (numpy.savez, as the
# Gemma Scope release is) still read, and deflated ones are refused saying why.
# Switching rebuilds npz.o (through $(ZLIB_STAMP)) and relinks.
ifeq ($(origin ZLIB),undefined)
ZLIB    := $(shell printf '\043include <zlib.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && echo 1 || echo 0)
endif
ifeq ($(ZLIB),1)
LDLIBS  += -lz
endif
ZLIB_STAMP := $(BUILD)/.zlib-$(ZLIB)

# CUDA (gpu/*.cu; gpu/README.md): with nvcc on the PATH or in /usr/local/cuda,
# `make` also builds $(BUILD)/libdmica-cuda.so (the kernels' CUDA entries, cuBLAS).
# bin/dmica never links it: engine/base/device.c opens it with dlopen when a run
# asks for the GPU, so the binary starts the same on machines without a GPU or a
# driver. The library calls back into the binary's kernels (the merges of
# stats.c), so executables export their symbols (-rdynamic). CUDA=0 skips it;
# the sanitizer build (SAN=1) does not build it (its GPU tests skip).
NVCC    ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
ifeq ($(origin CUDA),undefined)
CUDA    := $(if $(NVCC),1,0)
endif
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
CUDA_LIB := $(if $(filter 1,$(CUDA)),$(if $(SAN),,$(BUILD)/libdmica-cuda.so))
LDFLAGS += -rdynamic

# The layers. Each folder compiles with its own include path, so a header from a
# layer it may not use is not found and the file does not build (a kernel that
# includes op.h, an adapter that includes the engine's private engine.h).
# docs/architecture.md draws the same table.
#   engine/base          errors, dtypes, tensors, the compute context
#   io                   every byte that crosses the disk
#   operators/kernels    the CPU kernels (gpu/ mirrors them file for file)
#   operators/analysis   the verdict, results.json, HTML and SVG
#   engine/api           op.h: what an operator sees of the engine
#   operators/adapters   one file per operator, and the registry
#   engine/core          the engine: pipelines, graphs, cache, runs
#   engine/cli           the commands
INC_base     := -Iengine/base
INC_io       := $(INC_base) -Iio
INC_kernels  := $(INC_io) -Ioperators/kernels
INC_analysis := $(INC_kernels) -Ioperators/analysis
INC_adapters := $(INC_analysis) -Iengine/api -Ioperators/adapters
INC_core     := $(INC_io) -Iengine/api -Iengine/core
INC_cli      := $(INC_analysis) -Iengine/api -Iengine/core -Iengine/cli
INC_all      := $(INC_cli) -Ioperators/adapters -Igpu
layer_inc = $(strip $(if $(filter engine/base/%,$1),$(INC_base),\
            $(if $(filter io/%,$1),$(INC_io),\
            $(if $(filter operators/kernels/%,$1),$(INC_kernels),\
            $(if $(filter operators/analysis/%,$1),$(INC_analysis),\
            $(if $(filter operators/adapters/%,$1),$(INC_adapters),\
            $(if $(filter engine/core/%,$1),$(INC_core),\
            $(if $(filter engine/cli/%,$1),$(INC_cli),$(INC_all)))))))))

DEPS_STAMP := $(BUILD)/.deps-ok
LIBSRC  := $(filter-out engine/cli/main.c,$(wildcard engine/*/*.c io/*.c operators/*/*.c gpu/*.c))
LIBOBJ  := $(LIBSRC:%.c=$(BUILD)/%.o)
TESTSRC := $(wildcard tests/test_*.c)
TESTBIN := $(TESTSRC:tests/%.c=$(BUILD)/tests/%)
BIN     := $(if $(SAN),$(BUILD)/dmica,bin/dmica)

.PHONY: all deps demo tiny-models check-layers test test-unit test-cli test-mpi test-san bench clean
all: $(BIN) $(CUDA_LIB)

# gpu/*.cu follow the kernels' layer rule (base, io and kernel headers only).
$(BUILD)/libdmica-cuda.so: $(wildcard gpu/*.cu gpu/*.cuh) engine/base/cuda_abi.h operators/kernels/stats.h operators/kernels/fastica.h operators/kernels/gpt2.h operators/kernels/model.h \
                        operators/kernels/sae.h
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -std=c++17 $(CUDA_ARCH) -Xcompiler -fPIC -shared $(INC_kernels) -Igpu -o $@ $(wildcard gpu/*.cu) -lcublas

# Installs missing Debian packages (as root) or says which are missing.
$(DEPS_STAMP): tools/install-deps
	@mkdir -p $(BUILD)
	@tools/install-deps
	@touch $@
deps: $(DEPS_STAMP)

$(BUILD)/demo_pipeline.o: $(BUILD)/demo_pipeline.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(call layer_inc,$<) -MMD -MP -c $< -o $@

$(MPI_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.mpi-*
	@touch $@
$(BUILD)/engine/core/dist.o: CFLAGS += $(MPI_CFLAGS)
$(BUILD)/engine/core/dist.o: $(MPI_STAMP)
$(ZLIB_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.zlib-*
	@touch $@
$(BUILD)/io/npz.o: CFLAGS += -DDM_ZLIB=$(ZLIB)
$(BUILD)/io/npz.o: $(ZLIB_STAMP)

$(BUILD)/libdmica.a: $(LIBOBJ)
	@rm -f $@
	ar rcs $@ $^

# The demo pipeline is embedded in the binary as a C string.
$(BUILD)/demo_pipeline.c: pipelines/demo.yaml
	@mkdir -p $(dir $@)
	{ printf 'const char dm_demo_pipeline[] =\n'; sed 's/\\/\\\\/g; s/"/\\"/g; s/^/"/; s/$$/\\n"/' $<; echo ';'; } > $@

# The whole archive: operators and commands are found by name at run time
# (operators/adapters/registry.c), so no symbol pulls them in.
$(BIN): $(BUILD)/engine/cli/main.o $(BUILD)/demo_pipeline.o $(BUILD)/libdmica.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(BUILD)/engine/cli/main.o $(BUILD)/demo_pipeline.o \
		-Wl,--whole-archive $(BUILD)/libdmica.a -Wl,--no-whole-archive $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libdmica.a | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INC_all) $(LDFLAGS) -MMD -MP -o $@ $< $(BUILD)/libdmica.a $(LDLIBS) $(TESTLIBS)

# Benchmark helpers (tools/*.c), linked like the tests.
$(BUILD)/tools/%: tools/%.c $(BUILD)/libdmica.a | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INC_all) $(LDFLAGS) -o $@ $< $(BUILD)/libdmica.a $(LDLIBS)

PYTHON ?= /usr/bin/python3

# tiny-gpt2.yaml's models: random weights in the real formats, made by our own tools.
build/tiny/.models: tools/make-gpt2 tools/make-sae | $(DEPS_STAMP)
	@mkdir -p build/tiny
	$(PYTHON) tools/make-gpt2 --n-embd 64 --n-layer 2 --n-head 4 --n-positions 128 --vocab-size 50257 \
		--tokenizer tests/data/gpt2-tokenizer --seed 1 --out build/tiny/gpt2
	$(PYTHON) tools/make-sae --d-in 64 --d-sae 512 --l0 12 --input-scale 0.36 --hook blocks.1.hook_resid_pre --seed 2 --out build/tiny/sae
	@touch $@
tiny-models: build/tiny/.models

# The embedded demo needs nothing but the binary: its planted_sae node makes the SAE.
# The overcomplete demo (RICA recovering more missed atoms than the whitened
# dimension, docs/rica.md) is a pipeline file beside it, in demo-out/overcomplete.
demo: $(BIN)
	$(BIN) demo --out demo-out
	$(BIN) run pipelines/demo-overcomplete.yaml --out demo-out/overcomplete

# Unit tests run from the repository root so they find tests/golden. The model
# and SAE tests run again without AVX-512, and so do the GEMMs' (whose plain C
# micro-kernels read the same packed panels as the AVX-512 ones) except under
# the sanitizers, where they would add half a minute to check those panels twice.
NO_AVX512_TESTS := test_gpt2 test_sae $(if $(SAN),,test_sgemm test_bgemm)
test-unit: $(TESTBIN) $(CUDA_LIB)
	@set -e; for t in $(TESTBIN); do echo "== $$t"; rc=0; CK_FORK=yes $$t || rc=$$?; \
		if [ $$rc = 77 ]; then echo "   (skipped)"; elif [ $$rc != 0 ]; then exit $$rc; fi; done
	@set -e; for t in $(NO_AVX512_TESTS); do \
		echo "== $(BUILD)/tests/$$t, DMICA_NO_AVX512=1 (the OpenBLAS and plain C paths of CPUs without AVX-512F)"; \
		DMICA_NO_AVX512=1 CK_FORK=yes $(BUILD)/tests/$$t; done

test-cli: $(BIN)
	@DMICA=$(abspath $(BIN)) DMICA_SAN=$(if $(SAN),1,0) DMICA_MPI=$(MPI) \
		DMICA_MPIRUN="$(MPI_TEST_ENV) $(MPIRUN) $(MPIRUN_FLAGS)" tests/cli/run-all

# tests/test_dist.c under mpirun with 1, 2 and 3 ranks (test-unit runs it once
# as a plain process). CI runs as root, which mpirun refuses without
# --allow-run-as-root; --oversubscribe lets 3 ranks share 2 cores.
# Under the sanitizers, LeakSanitizer reports about 3,000 blocks that Open MPI's
# MPI_Init allocates and MPI_Finalize never frees (in libmpi, libopen-rte,
# libopen-pal, hwloc, libevent: not dmica's, and not ours to fix).
# tests/lsan-mpi.supp suppresses the leaks allocated inside those libraries
# only, so a leak in dmica's code still fails the test (checked by planting
# one). The suppressions match on the allocation's stack, which the default
# frame-pointer unwinder cuts after one frame in libraries built without frame
# pointers (then "<unknown module>"): fast_unwind_on_malloc=0 unwinds fully,
# which costs a second or two here, MPI runs only.
MPIRUN       ?= mpirun
MPIRUN_FLAGS ?= --allow-run-as-root --oversubscribe
MPI_TEST_ENV := $(if $(SAN),ASAN_OPTIONS=fast_unwind_on_malloc=0 \
                LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan-mpi.supp:print_suppressions=0)
test-mpi: $(BUILD)/tests/test_dist
	@if ! command -v $(MPIRUN) >/dev/null 2>&1; then echo "test-mpi: skipped: no mpirun"; \
	elif [ "$(MPI)" != 1 ]; then echo "test-mpi: skipped: built without MPI (MPI=0)"; \
	else set -e; for n in 1 2 3; do \
		echo "== $(MPIRUN) -np $$n $(BUILD)/tests/test_dist"; \
		$(MPI_TEST_ENV) $(MPIRUN) $(MPIRUN_FLAGS) -np $$n $(BUILD)/tests/test_dist; done; fi

test-san:
	$(MAKE) BUILD=build/san SAN=1 test-unit
	$(MAKE) BUILD=build/san SAN=1 test-mpi
	$(MAKE) BUILD=build/san SAN=1 test-cli

# The layer rules the include paths cannot see (relative includes, operator
# names in the engine core, kernels reading the environment).
# Then each forbidden include must fail to compile with its folder's include path.
LAYER_PROBES := base:op.h io:op.h kernels:op.h kernels:engine.h kernels:summaries.h analysis:op.h \
                adapters:engine.h adapters:commands.h core:gpt2.h core:summaries.h
check-layers:
	@tools/check-layers
	@for p in $(LAYER_PROBES); do \
		layer=$${p%%:*}; h=$${p#*:}; \
		case $$layer in base) inc="$(INC_base)";; io) inc="$(INC_io)";; kernels) inc="$(INC_kernels)";; \
			analysis) inc="$(INC_analysis)";; adapters) inc="$(INC_adapters)";; core) inc="$(INC_core)";; esac; \
		if echo "#include \"$$h\"" | $(CC) $$inc -fsyntax-only -x c - 2>/dev/null; then \
			echo "check-layers: $$layer may include $$h, but must not"; exit 1; fi; \
	done; echo "check-layers: $(words $(LAYER_PROBES)) forbidden includes do not build"

test: all
	$(MAKE) check-layers
	$(MAKE) test-unit
	$(MAKE) test-mpi
	$(MAKE) test-cli
	$(MAKE) test-san
	$(MAKE) fuzz-replay

# Fuzzing (docs/fuzzing.md): tests/fuzz/NAME.c is a libFuzzer harness of one
# parser of user files. `make fuzz` builds each with clang (the library again,
# into build/fuzz/, with -fsanitize=fuzzer-no-link,address,undefined) and runs it
# for FUZZ_SECONDS (FUZZERS=name picks some); new inputs go to build/fuzz/corpus/,
# crashes to build/fuzz/crashes/. `make fuzz-replay` (in `make test`) runs every
# harness once on each file of tests/fuzz/corpus/NAME and tests/fuzz/crashes/NAME
# through tests/fuzz/replay.c, built with $(CC) and the test-san build's ASan/UBSan
# library: no clang needed, a few seconds.
FUZZERS      ?= npy npz safetensors sae_cfg pipeline spill node_json tokenizer_files tokenizer_encode tokenizer_json corpus
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := $(filter-out $(OPT),$(CFLAGS)) -O1 -Wno-unknown-warning-option -Wno-unknown-pragmas -Wno-pass-failed $(FUZZ_SAN)
FUZZ_DEFS    := -Itests/fuzz -DDM_FUZZ_SRCDIR='"$(CURDIR)"'
FUZZ_LIBOBJ  := $(LIBSRC:%.c=build/fuzz/%.o)
.PHONY: fuzz fuzz-build fuzz-replay fuzz-replay-run

build/fuzz/io/npz.o: FUZZ_CFLAGS += -DDM_ZLIB=$(ZLIB)
build/fuzz/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(call layer_inc,$<) -MMD -MP -c $< -o $@

# clang 14 has no "f16c" for __builtin_cpu_supports: the CPU-feature probe is
# built by $(CC), uninstrumented (it reads no input).
build/fuzz/engine/base/compute.o: engine/base/compute.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(call layer_inc,$<) -MMD -MP -c $< -o $@

build/fuzz/libdmica.a: $(FUZZ_LIBOBJ)
	@rm -f $@
	ar rcs $@ $^

build/fuzz/bin/%: tests/fuzz/%.c tests/fuzz/fuzz.c tests/fuzz/fuzz.h build/fuzz/libdmica.a
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(INC_all) $(FUZZ_DEFS) -o $@ tests/fuzz/$*.c tests/fuzz/fuzz.c \
		build/fuzz/libdmica.a $(LDLIBS)

fuzz-build: $(FUZZERS:%=build/fuzz/bin/%)

fuzz: fuzz-build
	@set -e; for f in $(FUZZERS); do \
		echo "== fuzz $$f for $(FUZZ_SECONDS) s"; \
		mkdir -p build/fuzz/corpus/$$f build/fuzz/crashes/$$f build/fuzz/tmp; \
		TMPDIR=$(CURDIR)/build/fuzz/tmp build/fuzz/bin/$$f -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
			-print_final_stats=1 -artifact_prefix=build/fuzz/crashes/$$f/ \
			$$( [ -f tests/fuzz/$$f.dict ] && echo -dict=tests/fuzz/$$f.dict ) \
			build/fuzz/corpus/$$f tests/fuzz/corpus/$$f; \
		rm -rf build/fuzz/tmp; done

$(BUILD)/fuzz-replay/%: tests/fuzz/%.c tests/fuzz/fuzz.c tests/fuzz/fuzz.h tests/fuzz/replay.c $(BUILD)/libdmica.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(INC_all) $(FUZZ_DEFS) $(LDFLAGS) -o $@ tests/fuzz/$*.c tests/fuzz/fuzz.c tests/fuzz/replay.c \
		$(BUILD)/libdmica.a $(LDLIBS)

fuzz-replay-run: $(FUZZERS:%=$(BUILD)/fuzz-replay/%)
	@set -e; for f in $(FUZZERS); do \
		$(BUILD)/fuzz-replay/$$f tests/fuzz/corpus/$$f $$( [ -d tests/fuzz/crashes/$$f ] && echo tests/fuzz/crashes/$$f ); done

fuzz-replay:
	$(MAKE) BUILD=build/san SAN=1 fuzz-replay-run

bench: all $(BUILD)/tools/spill-bench $(BUILD)/tools/sgemm-bench $(BUILD)/tools/bgemm-bench
	tools/bench

clean:
	rm -rf build bin demo-out

-include $(LIBOBJ:.o=.d) $(BUILD)/engine/cli/main.d $(TESTBIN:=.d)
-include $(FUZZ_LIBOBJ:.o=.d)
