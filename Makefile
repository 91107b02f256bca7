# lunasip — GNU Makefile. `make` builds ./lunasip; `make run`, `make test`, `make bench`.
# SANITIZE=address,undefined builds with sanitizers (make test does this in build/san).

CC       ?= cc
SANITIZE ?=
OPT      ?= -O2
BUILD    ?= build/$(if $(SANITIZE),san,rel)

PKGS_LUAJIT := luajit
LUAJIT_CFLAGS := $(shell pkg-config --cflags $(PKGS_LUAJIT) 2>/dev/null || echo -I/usr/include/luajit-2.1)
LUAJIT_LIBS   := $(shell pkg-config --libs $(PKGS_LUAJIT) 2>/dev/null || echo -lluajit-5.1)
# libev and mbedTLS ship no .pc file on Debian bookworm: fall back to the plain names.
EV_CFLAGS := $(shell pkg-config --cflags libev 2>/dev/null)
EV_LIBS   := $(shell pkg-config --libs libev 2>/dev/null || echo -lev)

WERROR   := $(if $(CI),-Werror,)
CFLAGS   ?= $(OPT) -g
CFLAGS   += -std=gnu11 -Wall -Wextra $(WERROR) -Wno-unused-parameter -fPIC -MMD -MP \
            -D_GNU_SOURCE -pthread $(LUAJIT_CFLAGS) $(EV_CFLAGS) $(RMQ_CFLAGS)
ifneq ($(SANITIZE),)
CFLAGS   += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=$(SANITIZE)
endif
# librabbitmq: the rabbitmq: event sink (src/evi_rabbitmq.c); -pthread: the sinks that block
# (flatstore, rabbitmq) run in threads of their own, never on the event loop.
RMQ_CFLAGS := $(shell pkg-config --cflags librabbitmq 2>/dev/null)
RMQ_LIBS   := $(shell pkg-config --libs librabbitmq 2>/dev/null || echo -lrabbitmq)
# mbedTLS: tls: and wss: (src/tls.c), SHA-1/base64 of the WebSocket handshake, HMAC of flow tokens.
TLS_LIBS := -lmbedtls -lmbedx509 -lmbedcrypto
LIBS     := $(LUAJIT_LIBS) $(EV_LIBS) $(RMQ_LIBS) $(TLS_LIBS) -lm -ldl -pthread

SRCS     := $(filter-out src/main.c,$(wildcard src/*.c))
OBJS     := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
MAIN_OBJ := $(BUILD)/obj/main.o
LIB      := $(BUILD)/liblunasip.a
SOLIB    := $(BUILD)/liblunasip.so
BIN      := $(BUILD)/lunasip
UNIT_SRCS := $(wildcard t/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:t/unit/%.c=$(BUILD)/t/%)
# Test tools: real peers written in C (t/tools/amqp_consume.c: a RabbitMQ consumer on librabbitmq).
TOOL_SRCS := $(wildcard t/tools/*.c)
TOOL_BINS := $(TOOL_SRCS:t/tools/%.c=$(BUILD)/t/tools/%)

.PHONY: all run test test-build bench fuzz clean deps-run deps-test deps-bench FORCE
all: lunasip

# The top-level ./lunasip is the optimized build.
lunasip: $(BIN)
ifeq ($(SANITIZE),)
	@cp -f $(BIN) $@
endif

# Objects depend on the flags they were built with: changing OPT or SANITIZE rebuilds.
FLAGS_FILE := $(BUILD)/.cflags
$(FLAGS_FILE): FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS) $(LDFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(LDFLAGS)' > $@
FORCE:

$(BUILD)/obj/%.o: src/%.c $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(OBJS)
	@rm -f $@
	ar rcs $@ $^

# --export-dynamic so the LuaJIT FFI finds the lunasip_* accessors through ffi.C;
# --whole-archive so accessors only Lua references are linked in.
$(BIN): $(MAIN_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -rdynamic -o $@ $(MAIN_OBJ) -Wl,--whole-archive $(LIB) -Wl,--no-whole-archive $(LIBS)

# The same objects as a shared library, for the busted specs (loaded with ffi.load).
$(SOLIB): $(LIB)
	$(CC) $(LDFLAGS) -shared -o $@ -Wl,--whole-archive $(LIB) -Wl,--no-whole-archive $(LIBS)

$(BUILD)/t/test_%: t/unit/test_%.c $(LIB) t/unit/test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc -o $@ $< $(LIB) $(LDFLAGS) $(LIBS)

$(BUILD)/t/tools/%: t/tools/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(LIBS)

run: deps-run lunasip
	@scripts/run.sh ./lunasip

test: deps-test
	@$(MAKE) --no-print-directory SANITIZE=address,undefined OPT=-O1 test-build
	@t/run.sh build/san

test-build: $(BIN) $(SOLIB) $(UNIT_BINS) $(TOOL_BINS)

bench: deps-bench
	@$(MAKE) --no-print-directory OPT="-O2 -DNDEBUG" all
	@bench/run.sh

# libFuzzer drivers (clang): FUZZ_SECONDS per target, seeded from the torture messages;
# new inputs go to a scratch corpus under build/fuzz, never into t/.
FUZZ_SECONDS ?= 60
# The parsers and what they need, nothing that wants a loop or a Lua state.
FUZZ_SRCS := src/log.c src/stats.c src/sip_grammar.c src/sip_msg.c src/json.c src/json_parse.c src/ws.c
fuzz:
	@mkdir -p build/fuzz
	@for t in sip_msg sip_grammar json ws; do \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc -o build/fuzz/fuzz_$$t t/fuzz/fuzz_$$t.c $(FUZZ_SRCS) -lmbedcrypto || exit 1; \
	  mkdir -p build/fuzz/corpus_$$t; \
	  build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus_$$t t/data/torture || exit 1; \
	done

deps-run:
	@scripts/deps.sh run
deps-test:
	@scripts/deps.sh test
deps-bench:
	@scripts/deps.sh bench

clean:
	rm -rf build lunasip

-include $(OBJS:.o=.d) $(MAIN_OBJ:.o=.d)
