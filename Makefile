# agentcgd — build, test, benchmark.
#   make run      build and start agentcgd with the shipped policies (in the
#                 VM harness when this host lacks sched_ext or cgroup v2 cpu+memory)
#   make deps     install what a fresh Debian 12 machine lacks (apt, VM kernel)
#   make build    debug build of the workspace
#   make static   fully static release binaries for the VM (target/$(TARGET)/release)
#   make test     deps + unit + host root + VM tests
#   make vm-test  VM tests only
#   make bench    benchmarks (tables on stdout, JSON under target/bench/)
#   make install  binaries, systemd unit, config, policies, reaction example
#                 (PREFIX=/usr/local, DESTDIR= for staging; docs/service.md)
#   make deb      target/deb/agentcgd_VERSION_amd64.deb with the same content
#   make deb-test install/check/purge the package in a throw-away root
#   make agents-test    the real agent CLIs (tests/agents/agents.lock) under
#                       agentcgd on this host: where each process lands
#   make agents-latest  the same with the newest releases; says what changed
#   make soak DURATION=30m  the daemon under an agent storm: RSS, fds and CPU
#                           per minute (target/soak/; docs/soak.md)
SHELL := /bin/bash
TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/$(TARGET)/release
CARGO ?= cargo
APT_PACKAGES := clang-19 llvm-19 libelf-dev zlib1g-dev libzstd-dev pkg-config \
	qemu-system-x86 busybox-static cpio cgroup-tools bpftool procps lintian \
	tmux python3-venv gcc libc6-dev prometheus

.PHONY: run deps build static test cargo-test vm-test agents-test agents-latest soak bench fmt clippy lint \
	install install-files deb deb-test

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
	$(MAKE) deb-test

# Real agent CLIs (pinned in tests/agents/agents.lock, installed into
# .agents-cache/) started in tmux as a user starts them, under agentcgd with
# the shipped policies on this host's cgroup2 mount.
agents-test: static
	tests/agents/run

agents-latest: static
	tests/agents/run --latest

# Long run under a steady storm of agents; figures per minute, and at the
# end every live agent must be placed (not part of `make test`).
DURATION ?= 30m
soak: static
	tests/soak/run $(DURATION)

# Benchmarks: figures, not pass/fail. Tables on stdout, JSON in target/bench/.
# Every executable in tests/bench but the guest scripts and the mount helper
# (cgroup2-favordynmods, which placement-latency calls; alone it needs a MOUNT).
bench: deps static
	@mkdir -p target/bench
	@set -e; for b in tests/bench/*; do \
	  case "$$b" in *-guest.sh|*/cgroup2-favordynmods) continue;; esac; \
	  [ -x "$$b" ] || continue; echo "### $$b"; "$$b"; done

# Install layout. PREFIX=/usr with UNITDIR=/lib/systemd/system is the
# Debian package's (packaging/build-deb); configuration is always in /etc.
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/lib/agentcgd
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/agentcgd
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc

install: static
	$(MAKE) install-files
	@echo "installed; the service is not enabled: see $(DOCDIR)/service.md (systemctl daemon-reload; systemctl enable --now agentcgd)"

# What `install` copies, without building (the package stages it).
install-files:
	install -D -s -m 0755 $(STATIC_DIR)/agentcgd $(DESTDIR)$(SBINDIR)/agentcgd
	install -D -s -m 0755 $(STATIC_DIR)/scx_agentcg $(DESTDIR)$(SBINDIR)/scx_agentcg
	install -D -s -m 0755 $(STATIC_DIR)/agentcg-replay $(DESTDIR)$(BINDIR)/agentcg-replay
	install -D -m 0755 packaging/workspace-checkpoint $(DESTDIR)$(LIBEXECDIR)/workspace-checkpoint
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' packaging/agentcgd.service.in > $(DESTDIR)$(UNITDIR)/agentcgd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/agentcgd.service
	install -d $(DESTDIR)$(SYSCONFDIR)/agentcgd/policies.d
	[ -f $(DESTDIR)$(SYSCONFDIR)/agentcgd/agentcgd.yaml ] || install -m 0644 policies/agentcgd.yaml $(DESTDIR)$(SYSCONFDIR)/agentcgd/agentcgd.yaml
	for f in policies/*.yaml; do [ "$$(basename $$f)" = agentcgd.yaml ] || install -m 0644 $$f $(DESTDIR)$(SYSCONFDIR)/agentcgd/policies.d/; done
	install -d $(DESTDIR)$(DOCDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 README.md docs/service.md docs/reactions.md $(DESTDIR)$(DOCDIR)/
	for m in agentcgd.8 scx_agentcg.8 agentcg-replay.1; do \
	  gzip -9n < packaging/man/$$m > $(DESTDIR)$(MANDIR)/man$${m##*.}/$$m.gz; chmod 0644 $(DESTDIR)$(MANDIR)/man$${m##*.}/$$m.gz; done

deb: static
	packaging/build-deb

# Installs the package into a throw-away root (dpkg --root), runs
# `agentcgd check` from the installed paths there, verifies the unit, purges
# it and checks nothing is left; lintian where installed.
deb-test: deb
	packaging/test-deb target/deb/agentcgd_*_amd64.deb

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
