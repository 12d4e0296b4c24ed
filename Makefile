# overdub — the two commands:
#   make run    install missing system packages, then run the daemon (extra flags: ARGS="...")
#   make test   install missing system packages, then run the whole test suite
# Also: make build | bench | bench-ws | lint | deps
#   make bench-ws BENCH_ARGS="100 30 20000"   only the HTTP/WebSocket bench (clients, seconds, requests)

CARGO ?= cargo
ARGS ?=
BENCH_ARGS ?=

.PHONY: all run test build bench bench-ws lint deps

all: build

deps:
	scripts/install-deps

run: deps
	$(CARGO) run --release -- daemon $(ARGS)

test: deps
	$(CARGO) test --all-features

build: deps
	$(CARGO) build --release

bench: deps
	$(CARGO) bench
	@for s in scripts/bench-*; do \
		if [ -x "$$s" ]; then echo "== $$s"; "$$s" || exit 1; fi; \
	done

bench-ws: deps
	scripts/bench-ws $(BENCH_ARGS)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
