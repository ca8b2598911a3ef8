# shmvm: the two commands a new user needs are `make demo` and `make test`.
# Both start with `make deps`, which installs every system package the
# project uses (idempotent; needs root and the Debian package registry).

SHELL := /bin/bash
CARGO ?= cargo
BUILD := build

.PHONY: all deps build demo test check unit bench clean
.PHONY: bench-memory

all: build

APT_PACKAGES := qemu-system-x86 busybox-static cpio lz4 time hyperfine
DEPS_STAMP := $(BUILD)/.deps

deps: $(DEPS_STAMP)

$(DEPS_STAMP): scripts/deps.sh
	bash scripts/deps.sh
	@mkdir -p $(BUILD) && touch $@

build: deps
	$(CARGO) build --release --workspace

demo: build
	@echo "demo: not wired yet"

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: build
	$(CARGO) test --release --workspace

test: deps check unit

bench: build
	@echo "bench: see bench/"

# Memory backends: prealloc 4 GiB per backend vs the kernel limit and QEMU (README).
bench: bench-memory
bench-memory: build
	$(CARGO) bench -p memory --bench prealloc

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
