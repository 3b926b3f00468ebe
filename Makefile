# Starling - build, run and test.
#
#   make run     install what is missing, build, start starlingd on localhost
#   make test    install, build (plain and ASan+UBSan), run every test
#   make fuzz    run each libFuzzer target for FUZZ_TIME seconds (default 60)
#
# Sources are picked up by directory, so adding a module is adding a file.

BUILD    ?= build
SAN      ?=
CC       ?= cc
OPT      ?= -O2
FUZZ_TIME ?= 60

CFLAGS_COMMON := -std=gnu11 -g $(OPT) -Wall -Wextra -Werror -Wno-unused-parameter \
                 -Wformat=2 -Wvla -fno-strict-aliasing -D_GNU_SOURCE -Iinclude -I. \
                 -DSTARLING_VERSION=\"$(shell cat VERSION)\"
LIBS := -lexpat -lssl -lcrypto -lsqlite3 -lidn -lpthread -lm

ifeq ($(SAN),asan)
BUILD := build-asan
CFLAGS_COMMON += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDSAN := -fsanitize=address,undefined
endif

CORE_SRC   := $(sort $(wildcard core/*.c))
SERVER_SRC := $(sort $(filter-out server/main.c,$(wildcard server/*.c)) \
                     $(wildcard server/storage/*.c) $(wildcard server/modules/*.c))
CTL_SRC    := $(sort $(wildcard ctl/*.c))
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))
ITEST_C    := $(sort $(wildcard tests/integration/*.c))

CORE_OBJ   := $(CORE_SRC:%.c=$(BUILD)/%.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o)
CTL_OBJ    := $(CTL_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_BIN   := $(FUZZ_SRC:tests/fuzz/%.c=build-fuzz/%)
ITEST_BIN  := $(ITEST_C:tests/integration/%.c=$(BUILD)/tests/%)

.PHONY: all deps run test unit fuzz fuzz-replay integration asan clean format check-format

all: $(BUILD)/starlingd $(BUILD)/starlingctl $(UNIT_BIN) $(ITEST_BIN)

deps:
	@sh scripts/deps.sh

$(BUILD)/%.o: %.c $(wildcard include/starling/*.h core/*.h server/*.h server/storage/*.h ctl/*.h) VERSION
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -c $< -o $@

$(BUILD)/libstarling-core.a: $(CORE_OBJ)
	@rm -f $@; ar rcs $@ $^

$(BUILD)/libstarling-server.a: $(SERVER_OBJ)
	@rm -f $@; ar rcs $@ $^

$(BUILD)/starlingd: $(BUILD)/server/main.o $(BUILD)/libstarling-server.a $(BUILD)/libstarling-core.a
	$(CC) $(LDSAN) -o $@ $^ $(LIBS)

$(BUILD)/starlingctl: $(CTL_OBJ) $(BUILD)/libstarling-server.a $(BUILD)/libstarling-core.a
	$(CC) $(LDSAN) -o $@ $^ $(LIBS)

# tests/unit/test_server_*.c test server code; the others only the core.
$(BUILD)/tests/test_server_%: tests/unit/test_server_%.c $(BUILD)/libstarling-server.a $(BUILD)/libstarling-core.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDSAN) -o $@ $^ -lcmocka $(LIBS)

$(BUILD)/tests/test_%: tests/unit/test_%.c $(BUILD)/libstarling-core.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDSAN) -o $@ $^ -lcmocka $(LIBS)

# Integration helpers written in C (e.g. the libstrophe client).
$(BUILD)/tests/%: tests/integration/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(LDSAN) -o $@ $< $(shell pkg-config --cflags --libs libstrophe)

# libFuzzer targets always build with clang, ASan and UBSan.
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -Iinclude -I. -fsanitize=fuzzer,address,undefined \
               -DSTARLING_VERSION=\"$(shell cat VERSION)\"
# The c2s target runs a whole in-process server, so it links server/ too.
build-fuzz/fuzz_c2s: tests/fuzz/fuzz_c2s.c $(CORE_SRC) $(SERVER_SRC) $(wildcard include/starling/*.h server/*.h server/*/*.h)
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -o $@ $< $(CORE_SRC) $(SERVER_SRC) $(LIBS)

build-fuzz/%: tests/fuzz/%.c $(CORE_SRC) $(wildcard include/starling/*.h core/*.h)
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -o $@ $< $(CORE_SRC) $(LIBS)

run: deps all
	@sh scripts/run.sh

unit: all
	@sh scripts/test.sh unit

asan:
	$(MAKE) SAN=asan all

fuzz-replay: $(FUZZ_BIN)
	@sh scripts/test.sh fuzz

fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p tests/fuzz/corpus/$$n; \
	  echo "== $$n for $(FUZZ_TIME)s"; \
	  $$f -max_total_time=$(FUZZ_TIME) -artifact_prefix=tests/fuzz/ tests/fuzz/corpus/$$n || exit 1; done

integration: all
	@sh scripts/test.sh integration

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory SAN=asan all
	@$(MAKE) --no-print-directory $(FUZZ_BIN)
	@sh scripts/test.sh all

format:
	clang-format -i $(wildcard include/starling/*.h core/*.[ch] server/*.[ch] server/*/*.[ch] ctl/*.[ch] tests/unit/*.c tests/fuzz/*.c)

clean:
	rm -rf build build-asan build-fuzz

# ---- benchmarks (bench/): the load generator and the side-by-side run ----
# `make bench` builds build/bench/loadgen and runs nothing;
# `make bench-compare` runs bench/compare (Prosody, ejabberd; see docs/performance.md).
.PHONY: bench bench-compare
bench: all $(BUILD)/bench/loadgen

$(BUILD)/bench/loadgen: bench/loadgen.c $(BUILD)/libstarling-core.a $(wildcard include/starling/*.h)
	@mkdir -p $(dir $@)
	gcc -std=gnu11 -g -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude -o $@ $< \
	    $(BUILD)/libstarling-core.a -lexpat -lssl -lcrypto -lidn

bench-compare: bench
	bench/compare $(COMPARE_ARGS)
