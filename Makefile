# shmvm: the two commands a new user needs are `make demo` and `make test`.
# Both start with `make deps`, which installs every system package the
# project uses (idempotent; needs root and the Debian package registry).

SHELL := /bin/bash
CARGO ?= cargo
BUILD := build

.PHONY: all deps build demo test check unit bench clean testkernel lab lab-deps guest-tool

all: build

APT_PACKAGES := qemu-system-x86 busybox-static cpio lz4 time hyperfine
DEPS_STAMP := $(BUILD)/.deps

deps: $(DEPS_STAMP)

$(DEPS_STAMP): scripts/deps.sh
	bash scripts/deps.sh
	@mkdir -p $(BUILD) && touch $@

build: deps
	$(CARGO) build --release --workspace

# The freestanding test kernel (guest/testkernel, outside the workspace;
# its flags are in guest/testkernel/.cargo/config.toml). The objdump check
# keeps SSE/AVX out of it: CPL0 code is emulated on PVM hosts.
TESTKERNEL := $(BUILD)/guest/testkernel
TESTKERNEL_SRC := $(wildcard guest/testkernel/src/*.rs) guest/testkernel/Cargo.toml \
	guest/testkernel/link.ld guest/testkernel/.cargo/config.toml

build: testkernel

testkernel: $(TESTKERNEL)

$(TESTKERNEL): $(TESTKERNEL_SRC)
	@# rustc warns that sse2 belongs to the target ABI: harmless here (no floats).
	cd guest/testkernel && $(CARGO) build --release --quiet
	@if objdump -d guest/testkernel/target/release/testkernel | grep -qE '%[xyz]mm[0-9]'; then \
		echo "testkernel: SSE/AVX register use found (objdump -d)" >&2; exit 1; fi
	@mkdir -p $(dir $@)
	cp guest/testkernel/target/release/testkernel $@

# The guest-side ivshmem tool as a static Linux binary (runs in any Linux
# guest; the lab also uses it on the host side with --path).
GUEST_TOOL := target/x86_64-unknown-linux-gnu/release/ivshmem-tool

guest-tool:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p ivshmem-tool \
		--target x86_64-unknown-linux-gnu
	@echo "guest-tool: $(GUEST_TOOL) (static)"

# The KVM lab (tests/lab/, README "The KVM lab"): stock Linux guests under a
# real /dev/kvm inside an L1 Linux under QEMU TCG with nested SVM, shmvm and
# QEMU microvm (reference) as L2 VMMs. Variables: see tests/lab/run.sh.
lab-deps: deps
	bash tests/lab/fetch.sh

lab: lab-deps
	bash tests/lab/run.sh

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

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
