# shmvm: the two commands a new user needs are `make demo` and `make test`.
# Both start with `make deps`, which installs every system package the
# project uses (idempotent; needs root and the Debian package registry).
#
# One rule per target: a target's prerequisites and recipe are in one place.
# Variables first, then the targets in the order a user meets them.

SHELL := /bin/bash
CARGO ?= cargo
BUILD := build

.PHONY: all deps build workspace testkernel shmvm lab-tools guest-tool \
	demo demo-ivshmem test check check-portable unit testkernel-unit testkernel-check \
	lab lab-deps bench bench-boot bench-ivshmem bench-memory clean

# --- variables -----------------------------------------------------------

APT_PACKAGES := qemu-system-x86 busybox-static cpio lz4 time hyperfine acpica-tools
DEPS_STAMP := $(BUILD)/.deps

# The freestanding test kernel (guest/testkernel, outside the workspace;
# its flags are in guest/testkernel/.cargo/config.toml).
TESTKERNEL := $(BUILD)/guest/testkernel
TESTKERNEL_SRC := $(wildcard guest/testkernel/src/*.rs guest/protocol/src/*.rs) \
	guest/testkernel/Cargo.toml guest/protocol/Cargo.toml \
	guest/testkernel/link.ld guest/testkernel/.cargo/config.toml

# The shipped shmvm: static (no dynamic loader, no shared libc pages), non-PIE
# (no start-up relocations), size-optimized with fat LTO. Half the peak RSS
# and a faster exec than the default dynamic build (README, "Benchmarks").
# Built for an explicit --target so the flags stay off build scripts and
# proc macros; the tests use the plain target/release/shmvm.
SHMVM := $(BUILD)/shmvm
HOST_TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/$(HOST_TARGET)/release
SHMVM_STATIC_ENV := RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=fat \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_STRIP=symbols

# Static tools for the KVM lab, same flags as the shipped shmvm (so the
# builds share their compiled dependencies): the guest-side ivshmem tool
# (L2, and the L1 host side with --path) and the lab runner (L1 and host).
GUEST_TOOL := $(STATIC_DIR)/ivshmem-tool
LAB_RUNNER := $(STATIC_DIR)/lab
IVSHMEM_SERVER := $(STATIC_DIR)/ivshmem-server
IVSHMEM_DB_KO := $(BUILD)/guest/ivshmem_db.ko
LAB := $(BUILD)/lab
# The scenario table the lab runs (one line a scenario; a different file
# runs other scenarios, e.g. LAB_SCENARIOS=my-scenarios make lab).
LAB_SCENARIOS ?= tests/lab/scenarios

# make check-portable: the crates that must build on macOS and the BSDs, the
# targets, and Debian's toolchain for them (its cargo, rustc and clippy come
# before rustup's on PATH; RUSTC_BOOTSTRAP for -Z build-std on a stable rustc).
# Every workspace crate that can build there is in the list, vmm (the shmvm
# binary: HVF on aarch64 macOS, no accelerator elsewhere) too. Linux-only,
# and why: ivshmem-server (one eventfd per peer and vector is its
# protocol), ivshmem-tool (runs in the Linux guests: /sys PCI resources,
# AF_VSOCK, O_DIRECT), fuzz-targets (fuzzes ivshmem-server and vmm's
# Linux-only parts), tests (the e2e harness and the labs run shmvm on KVM).
PORTABLE_CRATES := -p memory -p devices -p shmvm-protocol -p aarch64-exits -p hv-boundary -p hv-hvf \
	-p vmm
PORTABLE_TARGETS ?= aarch64-apple-darwin x86_64-apple-darwin x86_64-unknown-freebsd x86_64-unknown-openbsd
PORTABLE_ENV := env -u RUSTUP_TOOLCHAIN PATH=/usr/bin:$$PATH RUSTC_BOOTSTRAP=1 \
	CARGO_TARGET_DIR=target/cross

# aarch64 (README, "Architectures"): cross-built with Debian's Rust 1.96
# (/usr/bin first on PATH: its cargo, rustc and clippy, which have the
# arm64 std; rustup's have not), linked static by aarch64-linux-gnu-gcc,
# in its own target dir (another compiler version than the host build).
AARCH64_TARGET := aarch64-unknown-linux-gnu
AARCH64_ENV := PATH=/usr/bin:$$PATH CARGO_TARGET_DIR=target/cross \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
AARCH64_OUT := target/cross/$(AARCH64_TARGET)/release
SHMVM_AARCH64 := $(BUILD)/aarch64/shmvm
LAB_AARCH64 := $(BUILD)/aarch64/lab
TOOL_AARCH64 := $(BUILD)/aarch64/ivshmem-tool
SERVER_AARCH64 := $(BUILD)/aarch64/ivshmem-server
IVSHMEM_DB_KO_ARM64 := $(BUILD)/guest/arm64/ivshmem_db.ko
VHOST_RNG_AARCH64 := $(BUILD)/aarch64/vhost/bin/vhost-device-rng
LAB_ARM64 := $(BUILD)/lab-arm64
# The test kernel built for aarch64 (README, "Architectures"): the same
# crate as an arm64 Image, for the bare-metal softfloat target (strict
# alignment, no FP/SIMD: it runs with the MMU off) with core built from
# Debian's rust-web-src (-Z build-std on Debian's 1.96 under RUSTC_BOOTSTRAP,
# as check-portable does), linked by aarch64-linux-gnu-ld, objcopy'd flat.
TESTKERNEL_AARCH64 := $(BUILD)/aarch64/testkernel.img
TESTKERNEL_AARCH64_TARGET := aarch64-unknown-none-softfloat
TESTKERNEL_AARCH64_ENV := env -u RUSTUP_TOOLCHAIN PATH=/usr/bin:$$PATH RUSTC_BOOTSTRAP=1
TESTKERNEL_AARCH64_ARGS := --release --quiet --target $(TESTKERNEL_AARCH64_TARGET) \
	-Z build-std=core -Z build-std-features=compiler-builtins-mem
TESTKERNEL_AARCH64_ELF := guest/testkernel/target/$(TESTKERNEL_AARCH64_TARGET)/release/testkernel
LAB_ARM64_SCENARIOS ?= tests/lab/arm64/scenarios

DEMO_RAM ?= 256M
BENCH_RUNS ?= 20

# --- building ------------------------------------------------------------

all: build

deps: $(DEPS_STAMP)

$(DEPS_STAMP): scripts/deps.sh
	bash scripts/deps.sh
	@mkdir -p $(BUILD) && touch $@

# Everything a user runs: the release workspace (target/release), the test
# kernel and the shipped static shmvm.
build: workspace testkernel shmvm

workspace: deps
	$(CARGO) build --release --workspace

testkernel: $(TESTKERNEL)

# The aarch64 test kernel; the objdump check keeps FP/SIMD registers and
# exclusive (atomic) instructions out: with the MMU off every access is
# Device memory, where exclusives need not work.
.PHONY: testkernel-aarch64
testkernel-aarch64: $(TESTKERNEL_AARCH64)

$(TESTKERNEL_AARCH64): $(TESTKERNEL_SRC) $(wildcard guest/testkernel/src/aarch64/*.rs) \
		guest/testkernel/link-aarch64.ld $(DEPS_STAMP)
	cd guest/testkernel && $(TESTKERNEL_AARCH64_ENV) cargo build $(TESTKERNEL_AARCH64_ARGS)
	@if aarch64-linux-gnu-objdump -d --no-show-raw-insn $(TESTKERNEL_AARCH64_ELF) | sed 's|//.*||; s|<[^>]*>||g' \
		| grep -qE '\b(ld|st)a?xr|\b[bhsdqv][0-9]+\b'; then \
		echo "testkernel-aarch64: FP/SIMD register or exclusive access found (objdump -d)" >&2; exit 1; fi
	@mkdir -p $(dir $@)
	aarch64-linux-gnu-objcopy -O binary $(TESTKERNEL_AARCH64_ELF) $@.tmp && mv -f $@.tmp $@

# The objdump check keeps SSE/AVX out of the kernel: CPL0 code is emulated
# on PVM hosts.
$(TESTKERNEL): $(TESTKERNEL_SRC)
	@# rustc warns that sse2 belongs to the target ABI: harmless here (no floats).
	cd guest/testkernel && $(CARGO) build --release --quiet
	@if objdump -d guest/testkernel/target/release/testkernel | grep -qE '%[xyz]mm[0-9]'; then \
		echo "testkernel: SSE/AVX register use found (objdump -d)" >&2; exit 1; fi
	@mkdir -p $(dir $@)
	cp guest/testkernel/target/release/testkernel $@

# Installed by copy-then-rename: a VM started from build/shmvm keeps running
# its (now unlinked) binary while a new one takes the name ("Text file busy"
# otherwise).
shmvm: deps
	$(SHMVM_STATIC_ENV) $(CARGO) build --release -p vmm --target $(HOST_TARGET)
	@mkdir -p $(BUILD)
	cp $(STATIC_DIR)/shmvm $(SHMVM).tmp && mv -f $(SHMVM).tmp $(SHMVM)

lab-tools: deps
	$(SHMVM_STATIC_ENV) $(CARGO) build --release -p ivshmem-tool -p shmvm-tests -p ivshmem-server \
		--bin ivshmem-tool --bin lab --bin ivshmem-server --target $(HOST_TARGET)
	@echo "lab-tools: $(GUEST_TOOL) $(LAB_RUNNER) $(IVSHMEM_SERVER) (static)"

guest-tool: lab-tools

# The aarch64 shmvm and lab runner, static (build/aarch64/).
.PHONY: aarch64 aarch64-check
aarch64: deps
	$(AARCH64_ENV) cargo build --release -p vmm -p shmvm-tests -p ivshmem-tool -p ivshmem-server \
		--bin shmvm --bin lab --bin ivshmem-tool --bin ivshmem-server --target $(AARCH64_TARGET)
	@mkdir -p $(BUILD)/aarch64
	cp $(AARCH64_OUT)/shmvm $(SHMVM_AARCH64).tmp && mv -f $(SHMVM_AARCH64).tmp $(SHMVM_AARCH64)
	cp $(AARCH64_OUT)/lab $(LAB_AARCH64).tmp && mv -f $(LAB_AARCH64).tmp $(LAB_AARCH64)
	cp $(AARCH64_OUT)/ivshmem-tool $(TOOL_AARCH64).tmp && mv -f $(TOOL_AARCH64).tmp $(TOOL_AARCH64)
	cp $(AARCH64_OUT)/ivshmem-server $(SERVER_AARCH64).tmp && mv -f $(SERVER_AARCH64).tmp $(SERVER_AARCH64)
	@echo "aarch64: $(SHMVM_AARCH64) $(LAB_AARCH64) $(TOOL_AARCH64) $(SERVER_AARCH64) (static)"

# Lints of the workspace as built for aarch64.
aarch64-check: deps
	$(AARCH64_ENV) cargo clippy --workspace --all-targets --target $(AARCH64_TARGET) -- -D warnings

# --- demos -----------------------------------------------------------------

# The test kernel boots with its RAM in a POSIX shm object (memory-backend-shm,
# as in QEMU), reports the memory map, fills and checks every usable byte, and
# exits through isa-debug-exit (33 = guest passed); then a guest and a host
# process share a named shm object (demo-ivshmem).
demo: build demo-ivshmem
	@echo "demo: shmvm -kernel $(TESTKERNEL) -object memory-backend-shm,id=ram0,size=$(DEMO_RAM) -machine memory-backend=ram0 ..."
	@rc=0; $(SHMVM) -kernel $(TESTKERNEL) \
		-object memory-backend-shm,id=ram0,size=$(DEMO_RAM) -machine memory-backend=ram0 \
		-smp 2 -device isa-debug-exit,iobase=0xf4,iosize=4 \
		-append "shmvm.test=boot,memtest" --stats || rc=$$?; \
	if [ $$rc -eq 33 ]; then echo "demo: guest passed (exit code 33 from isa-debug-exit)"; \
	else echo "demo: FAILED (exit code $$rc)" >&2; exit 1; fi

# A guest and a host process sharing a named shm object (needs /dev/kvm).
demo-ivshmem: build
	SHMVM_BIN=$(SHMVM) bash scripts/demo-ivshmem.sh

# --- tests -----------------------------------------------------------------

# Everything, as CI runs it: lints, unit and end-to-end tests on the host
# /dev/kvm, the test kernel under QEMU, and the KVM lab (stock Linux guests).
test: deps check unit testkernel-check lab

# Lints of every crate: the workspace, and the test kernel with its own flags;
# then the portable crates for macOS and the BSDs (check-portable) and the
# workspace built for aarch64 (aarch64-check).
check: deps check-portable aarch64-check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd guest/testkernel && $(CARGO) fmt -- --check
	@# The test kernel's rustc warning about sse2 and the ABI is not a lint.
	cd guest/testkernel && $(CARGO) clippy --release --quiet -- -D warnings
	cd guest/testkernel && $(TESTKERNEL_AARCH64_ENV) cargo clippy $(TESTKERNEL_AARCH64_ARGS) -- -D warnings

# The crates that must build off Linux (memory, devices, shmvm-protocol,
# aarch64-exits, hv-boundary, hv-hvf: the HVF backend, and vmm: the shmvm
# binary), type-checked
# and clippy-checked for macOS (Apple silicon and Intel), FreeBSD and
# OpenBSD: Debian's Rust 1.96 (/usr/bin, installed by make deps) builds their
# std from rust-web-src (-Z build-std, type-checking only, no linker). One
# cargo run for every target (host build scripts and proc macros compile
# once; two targets' std build at a time), in its own target dir: 3 min 45 s
# cold on 2 quiet cores, 10 s warm, ~2.5 min after an edit in vmm (README,
# "macOS and the BSDs"). PORTABLE_TARGETS=... checks fewer.
check-portable: deps
	@echo "check-portable: $(PORTABLE_TARGETS)"
	$(PORTABLE_ENV) cargo clippy --quiet -Z build-std=std,panic_abort \
		$(foreach t,$(PORTABLE_TARGETS),--target $(t)) \
		$(PORTABLE_CRATES) --all-targets -- -D warnings

# Unit and end-to-end tests: the dynamic target/release/shmvm and the test
# kernel (not the static fat-LTO build/shmvm).
unit: workspace testkernel testkernel-unit
	$(CARGO) test --release --workspace

# The kernel's pure modules (parsing, range arithmetic) as host unit tests.
testkernel-unit:
	@mkdir -p $(BUILD)/guest
	cd guest/testkernel && rustc --edition 2024 --test -A dead_code -o ../../$(BUILD)/guest/testkernel-unit host_tests.rs
	$(BUILD)/guest/testkernel-unit

# The test kernel booted in QEMU (needs /dev/kvm), its host peer shm-peer.
testkernel-check: workspace testkernel
	bash guest/testkernel/qemu_check.sh

# The KVM lab (tests/lab/, README "The KVM lab"): stock Linux guests under a
# real /dev/kvm inside an L1 Linux under QEMU TCG with nested SVM, the shipped
# shmvm and QEMU microvm (reference) as L2 VMMs. Scenarios: tests/lab/scenarios;
# variables (LAB_ONLY, LAB_VMMS, ...): tests/src/lab/host.rs and the README.
lab-deps: deps
	bash tests/lab/fetch.sh

lab: lab-deps shmvm lab-tools ivshmem-db
	$(LAB_RUNNER) check $(LAB_SCENARIOS) >/dev/null
	bash guest/initramfs/build.sh $(LAB)/l2-initrd.gz $(GUEST_TOOL) $(LAB)/kernel/modules \
		$(IVSHMEM_DB_KO)
	@# virtme-ng in L1 only for a table with a vng scenario (~10 MB more image).
	VNG_VENV=$$([ "$$($(LAB_RUNNER) check-vng $(LAB_SCENARIOS))" = yes ] && echo $(BUILD)/venv) \
		bash tests/lab/build-l1.sh $(LAB)/l1-initrd.lz4 $(LAB)/kernel $(LAB)/l2-initrd.gz \
		$(GUEST_TOOL) $(LAB_RUNNER) $(LAB_SCENARIOS) $(SHMVM) $(IVSHMEM_SERVER)
	$(LAB_RUNNER) host --dir $(LAB) --scenarios $(LAB_SCENARIOS)
	@# The arm64 lab too, unless LAB_ONLY picked x86 scenarios.
	@if [ -z "$(LAB_ONLY)" ]; then $(MAKE) lab-arm64; fi

# The arm64 lab (README, "The arm64 lab"): an arm64 L1 under
# qemu-system-aarch64 TCG with EL2 and a real /dev/kvm, the aarch64 shmvm
# booting the stock Debian arm64 kernel as L2 per line of the table.
.PHONY: lab-arm64
lab-arm64: deps aarch64 lab-tools ivshmem-db-arm64 testkernel-aarch64
	bash scripts/vhost-backends-arm64.sh
	bash tests/lab/fetch-arm64.sh
	bash tests/lab/arm64/build-l1.sh $(LAB_ARM64) $(SHMVM_AARCH64) $(LAB_AARCH64) $(LAB_ARM64_SCENARIOS) $(TOOL_AARCH64) \
		$(SERVER_AARCH64) $(IVSHMEM_DB_KO_ARM64) $(VHOST_RNG_AARCH64) $(TESTKERNEL_AARCH64)
	$(LAB_RUNNER) host-arm64 --dir $(LAB_ARM64) --scenarios $(LAB_ARM64_SCENARIOS)

# cargo-fuzz (libFuzzer with coverage feedback, nightly Rust): every target
# of fuzz/ for FUZZ_SECS seconds (default 30; 7 targets), starting from its
# seed corpus fuzz/corpus/<target>; what libFuzzer finds worth keeping goes
# to build/fuzz/<target> (copy small, interesting inputs into the seed
# corpus), a crashing input to fuzz/artifacts/<target>/. Needs the nightly
# toolchain (rustup's, present on these machines) and cargo-fuzz (installed
# here from crates.io, ~8 min the first time); the first build of the
# instrumented targets takes ~10 min on 2 cores. Not part of make test: the
# same target functions replay the seed corpus plus mutations on stable in
# `cargo test` (fuzz-targets/tests/corpus.rs, ~3 s). Each target's log:
# build/fuzz/<target>.log.
FUZZ_SECS ?= 30
FUZZ_TARGETS ?= keyval cmdline kernel_image snapshot_state virtio_chain pci_config watchdog ivshmem_protocol vhost_user_replies
.PHONY: fuzz
fuzz:
	@rustup run nightly rustc --version >/dev/null 2>&1 || { echo "fuzz: needs rustup's nightly toolchain (rustup toolchain list); on stable, cargo test -p shmvm-fuzz-targets replays the corpus" >&2; exit 1; }
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && cargo +nightly fuzz build -O
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(BUILD)/fuzz/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECS) s"; \
		(cd fuzz && cargo +nightly fuzz run -O $$t ../$(BUILD)/fuzz/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECS) -timeout=10 -print_final_stats=1) \
			> $(BUILD)/fuzz/$$t.log 2>&1 || { tail -40 $(BUILD)/fuzz/$$t.log; exit 1; }; \
		grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' $(BUILD)/fuzz/$$t.log; \
	done

# --- benchmarks ------------------------------------------------------------

# Lab scenarios that fail on main, kept out of make test (tests/lab/pending-scenarios
# says why each is there).
.PHONY: lab-pending
lab-pending:
	@if grep -qv -e '^[[:space:]]*#' -e '^[[:space:]]*$$' tests/lab/pending-scenarios; then \
		LAB_SCENARIOS=tests/lab/pending-scenarios $(MAKE) lab; \
	else echo "lab-pending: no pending scenarios (tests/lab/pending-scenarios)"; fi

# virtio-blk, vhost-user-blk and virtio-fs throughput in the lab, shmvm and
# QEMU side by side (README); bench-fs: virtio-fs (virtiofsd) alone.
.PHONY: bench-blk bench-fs
bench-blk:
	LAB_SCENARIOS=tests/lab/bench-scenarios $(MAKE) lab
bench-fs:
	LAB_ONLY=fs-bench $(MAKE) bench-blk

# Every benchmark on the host (README): boot latency, ivshmem bandwidth,
# doorbell round trips, memory prealloc, QMP round trips, snapshots. The
# lab's disk and virtio-fs benchmarks are bench-blk and bench-fs.
bench: bench-boot bench-ivshmem bench-doorbell bench-memory bench-qmp bench-snapshot

# Boot latency and peak RSS of shmvm against QEMU microvm + qboot.
# BENCH_BASELINE=path/to/older/shmvm adds an older build to the same runs.
bench-boot: build
	python3 bench/boot_bench.py --runs $(BENCH_RUNS) --shmvm $(SHMVM) \
		--shmvm-dynamic target/release/shmvm $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))

# QMP: query-status round trip against QEMU's; boot with and without -qmp.
.PHONY: bench-qmp
bench-qmp: build
	python3 bench/qmp_bench.py --shmvm $(SHMVM)

# Snapshots: save time without RAM, restore to the first KVM_RUN, by RAM
# size (named shm) and vCPUs; see docs/SNAPSHOT.md.
.PHONY: bench-snapshot
bench-snapshot: build
	python3 bench/snapshot_bench.py --shmvm $(SHMVM) --testkernel $(TESTKERNEL)

# ivshmem: BAR2 vs guest RAM vs host bandwidth (needs /dev/kvm); see README.
bench-ivshmem: build
	target/release/bench-ivshmem --shmvm $(SHMVM) --kernel $(TESTKERNEL)

# The Linux guest side of ivshmem-doorbell: the ivshmem_db module built
# against the lab kernel's headers, and a smoke test under QEMU TCG (no
# /dev/kvm needed) with QEMU's ivshmem-doorbell on shmvm's server.
.PHONY: ivshmem-db ivshmem-db-arm64 ivshmem-db-check
ivshmem-db:
	bash guest/ivshmem-db/build.sh

# The same module cross-built for the arm64 lab's kernel.
ivshmem-db-arm64: deps
	bash guest/ivshmem-db/build.sh arm64

ivshmem-db-check: ivshmem-db guest-tool
	$(CARGO) build --release -p ivshmem-server
	tests/lab/fetch.sh
	bash guest/ivshmem-db/tcg_check.sh

# Just the lab's doorbell scenario (tests/lab/scenarios, extra doorbell): two
# shmvm and one QEMU Linux guest pass a doorbell token through ivshmem_db.
.PHONY: lab-doorbell
lab-doorbell:
	LAB_ONLY=doorbell-3peer $(MAKE) lab

# Doorbell round trips: shmvm vs QEMU guests and a host peer (bench/doorbell.sh).
.PHONY: bench-doorbell
bench-doorbell: build
	bash bench/doorbell.sh

# Memory backends: prealloc 4 GiB per backend vs the kernel limit and QEMU
# (README). About 10 minutes; one progress line per case on stderr.
bench-memory: build
	@echo "bench-memory: about 10 minutes (5 runs x 19 cases of 4 GiB); progress on stderr"
	$(CARGO) bench -p memory --bench prealloc

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

# --- Installing: shmvm, its man page and shell completions --------------
# All generated from the clap definition and the option table
# (vmm/src/bin/gen.rs). `make install PREFIX=/usr DESTDIR=/tmp/pkg`;
# QEMU_SYMLINK=1 adds bin/qemu-system-x86_64 -> shmvm for tools that only
# know QEMU's name (kunit.py --qemu_config, virtme-ng --qemu).
.PHONY: man completions install uninstall readme-table
PREFIX ?= /usr/local
DESTDIR ?=
QEMU_SYMLINK ?= 0
GEN := target/$(HOST_TARGET)/release/shmvm-gen
GEN_DIR := $(BUILD)/gen

$(GEN): shmvm

man: $(GEN)
	@mkdir -p $(GEN_DIR)
	$(GEN) man > $(GEN_DIR)/shmvm.1

completions: $(GEN)
	@mkdir -p $(GEN_DIR)
	$(GEN) completions bash > $(GEN_DIR)/shmvm.bash
	$(GEN) completions zsh > $(GEN_DIR)/_shmvm
	$(GEN) completions fish > $(GEN_DIR)/shmvm.fish

# Rewrites the README's option table from the code (a unit test checks it).
readme-table: $(GEN)
	python3 -c 'import re,subprocess,sys; p="README.md"; s=open(p).read(); \
	t=subprocess.run(["$(GEN)","readme-table"],capture_output=True,text=True,check=True).stdout; \
	b=re.search(r"<!-- options-table:begin[^\n]*-->\n",s); e=s.index("<!-- options-table:end -->"); \
	open(p,"w").write(s[:b.end()]+t+s[e:])'

install: shmvm man completions
	install -Dm755 $(SHMVM) $(DESTDIR)$(PREFIX)/bin/shmvm
	install -Dm644 $(GEN_DIR)/shmvm.1 $(DESTDIR)$(PREFIX)/share/man/man1/shmvm.1
	install -Dm644 $(GEN_DIR)/shmvm.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/shmvm
	install -Dm644 $(GEN_DIR)/_shmvm $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_shmvm
	install -Dm644 $(GEN_DIR)/shmvm.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/shmvm.fish
	if [ "$(QEMU_SYMLINK)" = 1 ]; then \
		ln -sf shmvm $(DESTDIR)$(PREFIX)/bin/qemu-system-x86_64; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/shmvm $(DESTDIR)$(PREFIX)/share/man/man1/shmvm.1 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions/shmvm \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_shmvm \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/shmvm.fish
	if [ -L $(DESTDIR)$(PREFIX)/bin/qemu-system-x86_64 ]; then \
		rm -f $(DESTDIR)$(PREFIX)/bin/qemu-system-x86_64; fi
