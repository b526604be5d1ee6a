# Developer and CI entry points. `make test` is the one command that runs the whole test suite:
# it starts the local stack (PostgreSQL, MariaDB and moto on loopback, see scripts/local-stack), runs the tests
# with the stack's env, and stops the stack again whatever the tests did.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := help

STACK     := scripts/local-stack
STACK_ENV := .local-stack/env
# Extra arguments for cargo nextest run, e.g.  make test TEST_ARGS='--test postgres_rotation --no-capture'
# or TEST_ARGS='-E "test(/kill/)"'
TEST_ARGS ?=
# The extra PostgreSQL majors the PostgreSQL-facing tests run on again after the full suite
# (scripts/test-majors), unless TEST_ARGS narrows the run; PG_MAJORS= skips them (and the stack
# then starts no extra major, so needs no npm).
PG_MAJORS ?= 16 17
# Extra arguments for cargo-deny's check, e.g.  make deny DENY_ARGS=advisories
DENY_ARGS ?=
# make simulate: schedules to run, and the seeds each known defect (src/mutants.rs) may take to be found
SEEDS ?= 20000
MUTANT_SEEDS ?= 3000

.PHONY: help stack-up stack-down stack-status test load-run demo bench simulate lint fmt deny docs docs-check ci

help:
	@echo 'make test        start the local stack, cargo nextest run --all-targets $$TEST_ARGS, the PostgreSQL tests on 16 and 17, the 15 slowest tests, stop the stack'
	@echo 'make demo        start the local stack, cargo build, scripts/demo, stop the stack'
	@echo 'make bench       start the local stack, build release and the image, print the benchmark table (scripts/bench)'
	@echo 'make simulate    the deterministic simulator (src/sim): $$SEEDS schedules, then every known defect found within $$MUTANT_SEEDS'
	@echo 'make lint        cargo fmt --check and cargo clippy -D warnings'
	@echo 'make deny        cargo-deny (advisories offline from ../shared/advisory-db, licenses, bans, sources)'
	@echo 'make docs        regenerate the book'"'"'s command pages from --help and build the book into docs/book'
	@echo 'make docs-check  what CI runs: command pages up to date, links and commands checked, the book built'
	@echo 'make stack-up    start PostgreSQL, MariaDB and moto and print their env (eval "$$(scripts/local-stack start)")'
	@echo 'make stack-down  stop them and delete their data'
	@echo 'make ci          what CI runs (.ci/run)'

bench:
	@scripts/bench

# The simulator runs the real engine against modelled services, in release (no services needed):
# prints `simulation: seeds=...`, its speed, and `simulation mutants: K of K found`. A failing seed
# prints its trace and the command that replays it.
simulate:
	SIM_SEEDS=$(SEEDS) SIM_MUTANT_SEEDS=$(MUTANT_SEEDS) cargo test --release --locked --lib -- \
		--nocapture --test-threads 1 every_schedule_keeps_every_invariant the_simulator_finds_every_mutant

stack-up:
	@$(STACK) start

stack-down:
	@$(STACK) stop

stack-status:
	@$(STACK) status

# One shell line, so the stack is stopped even when the tests fail or are interrupted, and the
# tests' exit status is the target's.
# The tests run under cargo-nextest (scripts/nextest, settings in .config/nextest.toml): every test
# its own process, all binaries in one pool. Tests that measure something (load run, kill run)
# write one summary line each to $(REPORTS); they are printed after the run, and then the 15
# slowest tests with their times (scripts/slowest-tests).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
REPORTS := $(TARGET_DIR)/tmp/reports

test:
	@trap '$(STACK) stop' EXIT; trap 'exit 130' INT TERM; \
	majors='$(if $(TEST_ARGS),,$(PG_MAJORS))'; \
	ROTATOR_PG_MAJORS="$$majors" $(STACK) start >/dev/null || exit $$?; \
	set -a; . ./$(STACK_ENV); set +a; \
	rm -rf $(REPORTS) target/nextest/default/junit.xml; \
	scripts/nextest run --workspace --all-targets --locked $(TEST_ARGS); rc=$$?; \
	if [ -n "$$majors" ]; then scripts/test-majors $$majors || rc=1; fi; \
	if ls $(REPORTS)/*.txt >/dev/null 2>&1; then echo; echo "== reports"; cat $(REPORTS)/*.txt; fi; \
	echo; scripts/slowest-tests 15 || true; \
	exit $$rc

# The long load run: 100 rotations under client load (about 4 minutes).
load-run:
	@$(MAKE) --no-print-directory test TEST_ARGS="--test load_run clients_see_no_failed_login" ROTATOR_LOAD_ROTATIONS=100

demo:
	@trap '$(STACK) stop' EXIT; trap 'exit 130' INT TERM; \
	ROTATOR_PG_MAJORS= $(STACK) start >/dev/null || exit $$?; \
	set -a; . ./$(STACK_ENV); set +a; \
	cargo build && scripts/demo

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

deny:
	@scripts/deny $(DENY_ARGS)

docs:
	@scripts/docs build

docs-check:
	@scripts/docs check

ci:
	bash .ci/run
