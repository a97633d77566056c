# agentcgd — build, test, benchmark.
#   make deps     install what a fresh Debian 12 machine lacks (apt, VM kernel)
#   make build    debug build of the workspace
#   make static   fully static release binaries for the VM (target/$(TARGET)/release)
#   make test     deps + unit + host root + VM tests
#   make vm-test  VM tests only
#   make bench    benchmarks (tables on stdout, JSON under target/bench/)
SHELL := /bin/bash
TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/$(TARGET)/release
CARGO ?= cargo
APT_PACKAGES := clang-19 llvm-19 libelf-dev zlib1g-dev libzstd-dev pkg-config \
	qemu-system-x86 busybox-static cpio cgroup-tools bpftool procps

.PHONY: deps build static test unit-test host-test vm-test bench fmt clippy install

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: apt packages present"; fi
	@tests/vm/fetch-kernel >/dev/null && echo "deps: VM kernel $$(cat $${AGENTCGD_VM_CACHE:-.vm-cache}/kernel-version 2>/dev/null)"

build:
	$(CARGO) build --workspace

static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --workspace --target $(TARGET)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
