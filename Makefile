# Starling - build, run and test.
#
#   make run     install what is missing, build, start starlingd on localhost
#   make test    install, build (plain and ASan+UBSan), run every test
#   make fuzz    run each libFuzzer target for FUZZ_TIME seconds (default 60),
#                FUZZ_JOBS (2) at a time, and print a summary per target
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
LIBS := -lexpat -lssl -lcrypto -lsodium -lsqlite3 -lidn -lpthread -lm

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
ITEST_PRELOAD := $(patsubst tests/integration/preload/%.c,$(BUILD)/tests/%.so,$(sort $(wildcard tests/integration/preload/*.c)))

.PHONY: all deps run test unit fuzz fuzz-replay integration asan clean format check-format

all: $(BUILD)/starlingd $(BUILD)/starlingctl $(UNIT_BIN) $(ITEST_BIN) $(ITEST_PRELOAD)

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
# The shared test headers (tests/unit/*.h) are prerequisites, not inputs.
$(BUILD)/tests/test_server_%: tests/unit/test_server_%.c $(BUILD)/libstarling-server.a $(BUILD)/libstarling-core.a $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDSAN) -o $@ $(filter-out %.h,$^) -lcmocka $(LIBS)

$(BUILD)/tests/test_%: tests/unit/test_%.c $(BUILD)/libstarling-core.a $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDSAN) -o $@ $(filter-out %.h,$^) -lcmocka $(LIBS)

# Integration helpers written in C (e.g. the libstrophe client).
$(BUILD)/tests/%: tests/integration/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(LDSAN) -o $@ $< $(shell pkg-config --cflags --libs libstrophe)

# LD_PRELOAD shims the integration tests load into the daemon; never
# sanitized themselves (a sanitized daemon loads its runtime first).
$(BUILD)/tests/%.so: tests/integration/preload/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -g -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $< -ldl

# libFuzzer targets always build with clang, ASan and UBSan.
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -Iinclude -I. -fsanitize=fuzzer,address,undefined \
               -DSTARLING_VERSION=\"$(shell cat VERSION)\"
# The c2s and stanzas targets run a whole in-process server, the config target
# checks module options against the module tables, and the tlsrec and tlshs
# targets drive server/tlsrec.c and server/tlshs.c behind server/tls.c's
# context, so all five link server/ too.
FUZZ_SERVER_BIN := build-fuzz/fuzz_c2s build-fuzz/fuzz_config build-fuzz/fuzz_stanzas build-fuzz/fuzz_tlsrec \
                   build-fuzz/fuzz_tlshs
$(FUZZ_SERVER_BIN): build-fuzz/%: tests/fuzz/%.c $(CORE_SRC) $(SERVER_SRC) $(wildcard include/starling/*.h server/*.h server/*/*.h tests/fuzz/*.h)
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -o $@ $< $(CORE_SRC) $(SERVER_SRC) $(LIBS)

build-fuzz/%: tests/fuzz/%.c $(CORE_SRC) $(wildcard include/starling/*.h core/*.h tests/fuzz/*.h)
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

# FUZZ_JOBS targets at a time (one per core; each target is one process).
# Each target's output goes to build-fuzz/NAME.log, so two runs do not
# interleave; the summary at the end gives runs, corpus size and findings
# (crash/leak/timeout/oom files, saved as tests/fuzz/NAME-crash-...) per
# target, and make fails if any target found something.
FUZZ_JOBS ?= 2
fuzz: $(FUZZ_BIN)
	@printf '%s\n' $(notdir $(FUZZ_BIN)) | xargs -P $(FUZZ_JOBS) -I{} sh -c ' \
	  mkdir -p tests/fuzz/corpus/{}; echo "== {}: fuzzing for $(FUZZ_TIME)s (build-fuzz/{}.log)"; \
	  build-fuzz/{} -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	    -artifact_prefix=tests/fuzz/{}- tests/fuzz/corpus/{} >build-fuzz/{}.log 2>&1; \
	  echo "== {}: done (exit $$?)"' || true
	@echo "== fuzz summary ($(FUZZ_TIME)s per target)"; bad=0; \
	for n in $(notdir $(FUZZ_BIN)); do \
	  runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' build-fuzz/$$n.log | tail -1); \
	  corpus=$$(find tests/fuzz/corpus/$$n -type f | wc -l); \
	  found=$$(ls tests/fuzz/$$n-crash-* tests/fuzz/$$n-leak-* tests/fuzz/$$n-timeout-* \
	           tests/fuzz/$$n-oom-* 2>/dev/null | wc -l); \
	  if grep -q '^==[0-9]*==ERROR\|^SUMMARY: \|deadly signal' build-fuzz/$$n.log && [ "$$found" -eq 0 ]; \
	  then found=1; fi; \
	  printf '%-16s runs %10s  corpus %5s files  findings %s\n' $$n "$${runs:-?}" $$corpus $$found; \
	  [ "$$found" -eq 0 ] || bad=1; \
	done; \
	[ $$bad -eq 0 ] || { echo "findings: see build-fuzz/NAME.log and tests/fuzz/NAME-*"; exit 1; }

integration: all
	@sh scripts/test.sh integration

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory SAN=asan all
	@$(MAKE) --no-print-directory $(FUZZ_BIN)
	@sh scripts/test.sh all

format:
	clang-format -i $(wildcard include/starling/*.h core/*.[ch] server/*.[ch] server/*/*.[ch] ctl/*.[ch] tests/unit/*.[ch] tests/fuzz/*.[ch])

clean:
	rm -rf build build-asan build-fuzz

# ---- benchmarks (bench/): the load generator and the side-by-side run ----
# `make bench` builds build/bench/loadgen, storage_group and tls_handshake and runs nothing;
# `make bench-compare` runs bench/compare (Prosody, ejabberd; see docs/performance.md).
.PHONY: bench bench-compare
bench: all $(BUILD)/bench/loadgen $(BUILD)/bench/storage_group $(BUILD)/bench/tls_handshake

# Storage-thread throughput, plain vs group commit (docs/internals/storage.md).
$(BUILD)/bench/storage_group: bench/storage_group.c $(BUILD)/libstarling-server.a $(BUILD)/libstarling-core.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDSAN) -o $@ $^ $(LIBS)

# Server CPU per TLS handshake inside OpenSSL alone (docs/performance.md).
$(BUILD)/bench/tls_handshake: bench/tls_handshake.c $(BUILD)/libstarling-server.a $(BUILD)/libstarling-core.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) $(LDSAN) -o $@ $^ $(LIBS)

$(BUILD)/bench/loadgen: bench/loadgen.c $(BUILD)/libstarling-core.a $(wildcard include/starling/*.h)
	@mkdir -p $(dir $@)
	gcc -std=gnu11 -g -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude -o $@ $< \
	    $(BUILD)/libstarling-core.a -lexpat -lssl -lcrypto -lidn

bench-compare: bench
	bench/compare $(COMPARE_ARGS)

# ---- soak (tests/soak/): long-running memory check, not part of `make test` ----
# `make soak` runs 10,000 sessions with churn for 10 minutes and fails if RSS
# at the end is more than 10% above RSS after the first minute; the short
# run is `make soak SOAK_SECONDS=60 SOAK_SESSIONS=2000`. See docs/testing.md.
.PHONY: soak
soak: $(BUILD)/starlingd
	STARLING_BUILD=$(BUILD) /usr/bin/python3 tests/soak/soak.py
