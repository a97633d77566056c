# agentcgd — build, test, benchmark.
#   make run      build and start agentcgd with the shipped policies (in the
#                 VM harness when this host lacks sched_ext or cgroup v2 cpu+memory)
#   make deps     install what a fresh Debian 12 machine lacks (apt, VM kernel)
#   make build    debug build of the workspace
#   make static   fully static release binaries for the VM (target/$(TARGET)/release)
#   make test     deps + unit + host root + VM tests
#   make vm-test  VM tests only
#   make bench    benchmarks (tables on stdout, JSON under target/bench/)
#   make agents-test    the real agent CLIs (tests/agents/agents.lock) under
#                       agentcgd on this host: where each process lands
#   make agents-latest  the same with the newest releases; says what changed
SHELL := /bin/bash
TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/$(TARGET)/release
CARGO ?= cargo
APT_PACKAGES := clang-19 llvm-19 libelf-dev zlib1g-dev libzstd-dev pkg-config \
	qemu-system-x86 busybox-static cpio cgroup-tools bpftool procps \
	tmux python3-venv

.PHONY: run deps build static test cargo-test vm-test agents-test agents-latest bench fmt clippy lint install

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

# One build configuration for everything (static release): the tests reuse
# the artefacts of the binaries the VM runs, so CI compiles the tree once.
STATIC_CARGO := RUSTFLAGS="-C target-feature=+crt-static" $(CARGO)
STATIC_FLAGS := --release --workspace --target $(TARGET)

static:
	$(STATIC_CARGO) build $(STATIC_FLAGS)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint: fmt clippy

# Unit tests and host root tests (real BPF on this kernel, real cgroup2 moves).
cargo-test:
	$(STATIC_CARGO) test $(STATIC_FLAGS)

# Guest cases in the real-kernel VM (sched_ext, cpu and memory controllers).
vm-test: static
	tests/vm/run-cases $(CASE)

test: deps
	$(MAKE) cargo-test
	$(MAKE) agents-test
	$(MAKE) vm-test

# Real agent CLIs (pinned in tests/agents/agents.lock, installed into
# .agents-cache/) started in tmux as a user starts them, under agentcgd with
# the shipped policies on this host's cgroup2 mount.
agents-test: static
	tests/agents/run

agents-latest: static
	tests/agents/run --latest

# Benchmarks: figures, not pass/fail. Tables on stdout, JSON in target/bench/.
bench: deps static
	@mkdir -p target/bench
	@set -e; for b in tests/bench/*; do \
	  case "$$b" in *-guest.sh) continue;; esac; \
	  [ -x "$$b" ] || continue; echo "### $$b"; "$$b"; done

install: static
	install -D -m 0755 $(STATIC_DIR)/agentcgd /usr/local/sbin/agentcgd
	install -D -m 0755 $(STATIC_DIR)/scx_agentcg /usr/local/sbin/scx_agentcg
	install -D -m 0755 $(STATIC_DIR)/agentcg-replay /usr/local/bin/agentcg-replay
	install -d /etc/agentcgd/policies.d
	[ -f /etc/agentcgd/agentcgd.yaml ] || install -m 0644 policies/agentcgd.yaml /etc/agentcgd/agentcgd.yaml
	for f in policies/*.yaml; do [ "$$(basename $$f)" = agentcgd.yaml ] || install -m 0644 $$f /etc/agentcgd/policies.d/; done

# The main job. On a host with sched_ext and a cgroup v2 /sys/fs/cgroup that
# offers cpu and memory, run the daemon here (as root); otherwise show it
# working in the VM harness.
run: deps static
	@if [ -e /sys/kernel/sched_ext/state ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then \
	  echo "running agentcgd on this host (Ctrl-C stops it)"; \
	  exec $(STATIC_DIR)/agentcgd --config policies/agentcgd.yaml --policies policies /sys/fs/cgroup/agentcg; \
	else \
	  echo "this host lacks sched_ext or cgroup v2 cpu+memory controllers: running agentcgd in the VM harness"; \
	  tests/vm/run tests/vm/demo.sh; \
	fi
