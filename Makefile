# homelab-as-code: every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYINFRA := $(VENV)/bin/pyinfra
PYTEST := $(VENV)/bin/pytest
LABCTL := $(PYTHON) tests/lab/labctl.py
LAB_INVENTORY := tests/lab/inventory.py
INV ?= inventory.py
HOST ?=
ARGS ?=

.PHONY: help
help: ## This list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# --- Python environment -------------------------------------------------------------------
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "python3 (>= 3.11) is needed"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "--> installing python3-venv"; apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --require-hashes -r constraints.txt
	@command -v ssh >/dev/null || { echo "--> installing openssh-client"; apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client >/dev/null; }
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with the locked dependencies

.PHONY: lock
lock: ## Re-resolve constraints.txt (versions and hashes) from pyproject.toml; ARGS=--upgrade for newer
	rm -rf build/lock && $(PYTHON) -m venv build/lock
	build/lock/bin/pip install -q pip-tools
	CUSTOM_COMPILE_COMMAND='make lock' build/lock/bin/pip-compile -q --generate-hashes \
	  --extra test --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  $(ARGS) -o constraints.txt pyproject.toml

# --- Checks that need no hosts ------------------------------------------------------------
.PHONY: lint
lint: venv ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: check-data
check-data: venv ## Validate an inventory's data without connecting (INV=inventory.py)
	$(PY) -c 'from tasks.common.datamodel.preflight import check_inventory_file as c; c("$(INV)")' \
	  && echo "$(INV): data is valid"

# promtool and amtool (Debian's prometheus, prometheus-alertmanager) unpacked under build/,
# not installed: no daemon starts on the controller. The unit tests check configs and rules.
PROMTOOLS := build/prometheus-tools
$(PROMTOOLS)/.installed:
	@command -v apt-get >/dev/null || { echo "promtool/amtool: need apt-get (Debian)"; exit 1; }
	rm -rf $(PROMTOOLS) && mkdir -p $(PROMTOOLS)/debs
	cd $(PROMTOOLS)/debs && { apt-get download -qq prometheus prometheus-alertmanager \
	  2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus prometheus-alertmanager; }; }
	for deb in $(PROMTOOLS)/debs/*.deb; do dpkg-deb -x "$$deb" $(PROMTOOLS)/root; done
	$(PROMTOOLS)/root/usr/bin/promtool --version >/dev/null
	touch $@

.PHONY: promtools
promtools: $(PROMTOOLS)/.installed ## Unpack promtool and amtool (Debian packages) under build/

# Node.js runs the OpenClaw plugin's unit test (tests/unit/test_actr_memory_plugin.py): the
# distribution's nodejs (>= 18 on Debian 12/13 and Ubuntu 24.04) where there is no node.
.PHONY: nodejs
nodejs:
	@command -v node >/dev/null || { echo "--> installing nodejs"; apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null; }

# rsync runs the lab VM agent's copies (tests/unit/test_vm_agent.py runs them on plain
# directories; the lab installs it too, labctl's HOST_PACKAGES).
.PHONY: rsync
rsync:
	@command -v rsync >/dev/null || { echo "--> installing rsync"; apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }

.PHONY: test-unit
test-unit: venv promtools nodejs rsync ## Unit tests: data model, validation, helpers, Prometheus rules
	$(PYTEST) -q tests/unit

.PHONY: test-plan
test-plan: venv promtools ## Plan tests: the real deploys on the real machines' facts, no network
	$(PYTEST) -q tests/plan

# Two pytest processes, each every other test of both layers (tests/conftest.py: --shard).
.PHONY: test-fast test-shard-0 test-shard-1
test-fast: venv promtools ## Lint, unit and plan tests side by side on two cores (make test runs this)
	$(MAKE) -j3 --output-sync=target --no-print-directory lint test-shard-0 test-shard-1

test-shard-0 test-shard-1: venv promtools nodejs rsync
	$(PYTEST) -q --shard $(subst test-shard-,,$@)/2 tests/unit tests/plan

.PHONY: docs
docs: venv ## Regenerate docs/data-keys.md, the table of data keys
	$(PY) -m tasks.common.datamodel.docs --update docs/data-keys.md

# --- The lab ------------------------------------------------------------------------------
.PHONY: lab-up
lab-up: venv ## Boot the lab hosts (reuses their roots if present)
	$(LABCTL) up

.PHONY: lab-up-fresh
lab-up-fresh: venv ## Boot the lab hosts from a clean copy of the cached image
	$(LABCTL) up --fresh

.PHONY: lab-down
lab-down: ## Stop the lab: no process, bridge, nft table or mount left
	$(LABCTL) down

.PHONY: lab-destroy
lab-destroy: ## Stop the lab and delete its hosts' roots and pools (the cache stays)
	$(LABCTL) destroy

.PHONY: lab-status
lab-status: ## One line per lab host
	$(LABCTL) status

.PHONY: lab-ssh
lab-ssh: ## Shell on a lab host: make lab-ssh HOST=pve
	$(LABCTL) ssh $(HOST)

.PHONY: lab-reboot
lab-reboot: ## Clean reboot of a lab host, back when SSH answers: HOST=...
	$(LABCTL) reboot $(HOST)

.PHONY: lab-kill
lab-kill: ## Pull the plug on a lab host (SIGKILL, no shutdown): HOST=...
	$(LABCTL) kill $(HOST)

.PHONY: lab-start
lab-start: ## Start a stopped lab host, back when SSH answers: HOST=...
	$(LABCTL) start $(HOST)

.PHONY: lab-rollout
lab-rollout: venv ## Full rollout on the lab
	@start=$$(date +%s); \
	$(PYINFRA) -y $(LAB_INVENTORY) deploys/full.py; \
	echo "--> full rollout over the lab: $$(( $$(date +%s) - start ))s"

# Four pytest processes side by side, each every fourth test (tests/conftest.py: --shard): the
# checks are read-only and wait on SSH, not on the CPU.
VERIFY_SHARDS := lab-verify-0 lab-verify-1 lab-verify-2 lab-verify-3
.PHONY: lab-verify $(VERIFY_SHARDS)
lab-verify: venv ## The verify suite against the lab
	$(MAKE) -j4 --output-sync=target --no-print-directory $(VERIFY_SHARDS)

$(VERIFY_SHARDS): venv
	$(PYTEST) -q --shard $(subst lab-verify-,,$@)/4 tests/verify --inventory $(LAB_INVENTORY)

.PHONY: lab
lab: venv ## Fresh lab, ready-made hosts (the fast loop): boot all, full rollout, verify
	@start=$$(date +%s); \
	$(LABCTL) up --fresh; \
	echo "--> lab up: $$(( $$(date +%s) - start ))s"
	$(MAKE) --no-print-directory lab-rollout lab-verify

.PHONY: lab-bare
lab-bare: venv ## Fresh lab from bare machines: the README's first install (two full runs), verify
	$(PYTEST) -q -s tests/lab/test_bring_up.py
	$(MAKE) --no-print-directory lab-verify

# --- The embedder's benchmarks and drill (on a running lab after `make lab`) ---------------
.PHONY: bench-embedder
bench-embedder: venv ## Embedder benchmarks, full size: server vs model, ingest latency, 1000 chunks, TTS
	EMBEDDER_BENCH_SECONDS=2 EMBEDDER_LATENCY_CHUNKS=100 EMBEDDER_INGEST_CHUNKS=1000 \
	  EMBEDDER_BENCH_BATCHES=1,8,16,32,64 EMBEDDER_BENCH_ROUNDS=30 EMBEDDER_BENCH_SWEEP_ROUNDS=3 \
	  EMBEDDER_BENCH_LATENCY_REQUESTS=100 EMBEDDER_MIN_SERVER_RATIO=0.9 \
	  $(PYTEST) -q -s tests/lab/test_embedder.py

.PHONY: bench-embedder-overhead
bench-embedder-overhead: venv ## The server's own cost per request (model call taken out), beside BASELINE=<git ref>
	EMBEDDER_OVERHEAD_SECONDS=5 EMBEDDER_OVERHEAD_ROUNDS=5 \
	  EMBEDDER_OVERHEAD_BASELINE=$(or $(BASELINE),HEAD) \
	  $(PYTEST) -q -s tests/lab/test_embedder.py -k own_cost_per_request

.PHONY: embedder-drill
embedder-drill: venv ## Embedder outage drill: embedding server, then PostgreSQL, down a minute each
	EMBEDDER_OUTAGE_SECONDS=60 $(PYTEST) -q -s tests/lab/test_embedder_outage.py

.PHONY: embedder-lock
embedder-lock: ## Re-resolve files/embedder/requirements-{cpu,cuda}.txt (CPython 3.13, x86_64)
	$(PYTHON) files/embedder/lock.py

# --- The memory store's drills, full counts ---------------------------------------------
.PHONY: drills
drills: venv ## Memory store drills, full counts (10 power cuts each kind), on the rolled-out lab (make lab)
	HOMELAB_DRILL_REPEAT=10 HOMELAB_DRILL_SITE_CUTS=10 HOMELAB_DRILL_WIPE=host \
	  HOMELAB_DRILL_WRITE_S=90 HOMELAB_DRILL_RECEIVER_OUTAGE=60 HOMELAB_DRILL_OUTAGE=75 \
	  HOMELAB_DRILL_ROLLBACK_WRITES=1000 \
	  $(PYTEST) -q -rs -s tests/lab/test_memory_store_drills.py

.PHONY: bench-actr
bench-actr: venv ## Benchmark: actr-engine retrieval vs plain pgvector, 100 000 memories (lab)
	$(PY) tests/bench/actr_retrieval.py --count 100000 --queries 500

.PHONY: bench-memory-store
bench-memory-store: venv ## Benchmark: commit latency, synchronous (WAL receivers) vs local, 10 000 each (lab)
	$(PY) tests/bench/memory_store_commits.py --commits 10000

.PHONY: bench-rollout
bench-rollout: venv ## Benchmark: no-change rollouts (full, per role, one template) beside the floor (lab)
	$(PY) tests/bench/rollout.py --rounds $(or $(ROUNDS),3)

# --- Everything ---------------------------------------------------------------------------
.PHONY: test
# The unit and plan tests (no lab) run beside the first install from bare machines, which waits
# mostly on the hosts' package installs; their output follows the install's, and either failing
# fails the run.
FAST_LOG := build/test-fast.log
# In make drills only: ageis-node's plug pulled alone (make test's whole-site power cuts pull
# it with every other host's).
TEST_ONLY_IN_DRILLS := --deselect tests/lab/test_memory_store_drills.py::test_pull_the_plug
# The unit tests' tools are installed first: apt beside the lab's own install would race for its lock.
test: venv promtools nodejs rsync ## All layers: lint, unit, plan, lab rollout + idempotence + verify (tears the lab down)
	@trap '$(LABCTL) down >/dev/null 2>&1 || true' EXIT; \
	mkdir -p build; \
	$(MAKE) --no-print-directory test-fast > $(FAST_LOG) 2>&1 & fast=$$!; \
	bare=0; $(MAKE) --no-print-directory lab-bare || bare=$$?; \
	fast_rc=0; wait $$fast || fast_rc=$$?; \
	echo "--> lint, unit and plan tests (run beside the first install):"; cat $(FAST_LOG); \
	test $$fast_rc -eq 0 || { echo "lint, unit or plan tests failed"; exit 1; }; \
	test $$bare -eq 0 || { echo "the first install from bare machines failed"; exit 1; }; \
	$(PYTEST) -q -s tests/lab/test_rollout.py; \
	$(PYTEST) -q -rs -s --durations=15 tests/lab --ignore=tests/lab/test_rollout.py \
	  --ignore=tests/lab/test_bring_up.py $(TEST_ONLY_IN_DRILLS); \
	$(PYTEST) -q -s tests/lab/test_rollout.py; \
	$(LABCTL) down

# --- Real machines ------------------------------------------------------------------------
.PHONY: status
status: venv ## Infrastructure status report from live data: make status INV=inventory.py [ARGS=--json]
	$(PY) -m tools.infrastructure_status --inventory $(INV) $(ARGS)

.PHONY: models-archive models-load models-list
MODEL ?=
export MODEL
# MODEL reaches pyinfra through the environment, quoted by the shell: never spliced into the line.
models-archive: venv ## Move an Ollama model from ageis-node's SSD to the HDD archive: MODEL=qwen3:32b [INV=...]
	$(PYINFRA) -y -vvv $(INV) deploys/models.py --data models_action=archive --data model="$$MODEL"

models-load: venv ## Copy an archived Ollama model back to the SSD: MODEL=qwen3:32b [INV=...]
	$(PYINFRA) -y -vvv $(INV) deploys/models.py --data models_action=load --data model="$$MODEL"

models-list: venv ## Ollama models on ageis-node's SSD and in the HDD archive [INV=...]
	$(PYINFRA) -y -vvv $(INV) deploys/models.py --data models_action=list

.PHONY: verify
verify: venv ## The verify suite against real hosts: make verify INV=inventory.py
	$(PYTEST) -q tests/verify --inventory $(INV)
