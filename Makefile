# dtrust-worker: the commands a newcomer and CI run. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
DEMO_DIR ?= demo

.PHONY: help demo test test-containers lint build fuzz clean check-schemas bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build the worker and the test kit
	@scripts/ensure-tools.sh
	$(CARGO) build --workspace --bins

demo: build ## the product end to end on defaults: simulator, bundle, checks, products, connection test
	@DEMO_DIR=$(DEMO_DIR) scripts/demo.sh

lint: ## rustfmt and clippy, warnings are errors
	@scripts/ensure-tools.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-schemas: ## check schemas/ (metaschema, examples, OpenAPI) with Python's validators
	@test -x target/schema-venv/bin/python || python3 -m venv target/schema-venv
	@target/schema-venv/bin/pip install -q -r schemas/requirements-check.txt
	set -o pipefail; target/schema-venv/bin/python schemas/check.py | tail -n 3

# The tests on RabbitMQ brokers of their own, in Docker (tests/containers.rs). They are
# #[ignore]d, so a plain `cargo test` shows them as skipped; these run them (with their
# figures and times printed).
CONTAINER_TESTS = $(CARGO) test --workspace --test containers -- --ignored --nocapture

test: lint check-schemas ## everything CI runs: lint, schemas, all tests against a real RabbitMQ, and the container tests where Docker is or can be brought up
	@scripts/ensure-rabbitmq.sh
	$(CARGO) build --workspace --bins
	set -o pipefail; scripts/ensure-docker.sh --optional bash -c '\
	  status=0; \
	  if [ "$$DTRUST_DOCKER" = 1 ]; then \
	    $(CARGO) test --workspace --no-fail-fast -- --skip containers:: || status=1; \
	    $(CONTAINER_TESTS) || status=1; \
	  else \
	    $(CARGO) test --workspace --no-fail-fast || status=1; \
	    echo "container tests skipped: $$DTRUST_DOCKER_SKIPPED"; \
	  fi; \
	  exit $$status' 2>&1 | scripts/test-summary.sh

test-containers: ## only the container tests: restart, kill, pause, memory alarm, cluster, contract on brokers of their own (Docker brought up if need be)
	@scripts/ensure-tools.sh
	$(CARGO) build --workspace --bins
	set -o pipefail; scripts/ensure-docker.sh $(CONTAINER_TESTS) 2>&1 | scripts/test-summary.sh

bench: ## benchmarks (release build) against RabbitMQ and the D-Trust simulator; quick mode, BENCH_FULL=1 for the full sizes; writes BENCHMARKS.md
	@scripts/ensure-rabbitmq.sh
	$(CARGO) build --release --workspace --bins
	target/release/dtrust-bench $(BENCH_ARGS)

fuzz: ## run the cargo-fuzz targets for a minute each (FUZZ_SECONDS=N); new inputs go to worker/fuzz/target/corpus
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd worker && for t in bundle properties job; do \
	  mkdir -p fuzz/target/corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; \
	done

clean: ## remove build output and the demo folder
	$(CARGO) clean
	rm -rf $(DEMO_DIR)
