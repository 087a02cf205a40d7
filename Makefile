# rebootless.windows: the single entry point for developers and CI.
#   make demo   bring up the simulated Windows fleet (Wine on loopback) and run the hotpatch job against it
#   make test   every check CI runs, with a summary table at the end (this is exactly what .ci/run calls)
# Each check is also a target of its own: lint unit integration sanity ansible-lint molecule changelog-lint
# galaxy-build docs-check. Setup targets: deps (Debian packages, root) venv collections.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

SYSTEM_PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CACHE := $(CURDIR)/.cache
VENV_STAMP := $(VENV)/.stamp-ci

# ansible.windows / community.windows come out of the `ansible` wheel (requirements/bundle.txt), never Galaxy.
BUNDLE_REQ := requirements/bundle.txt
BUNDLE_VERSION := $(shell sed -n 's/^ansible==\([0-9][0-9.]*\).*/\1/p' $(BUNDLE_REQ))
BUNDLE_WHEEL := $(CACHE)/wheels/ansible-$(BUNDLE_VERSION)-py3-none-any.whl
DEP_COLLECTIONS := ansible.windows community.windows
DEPS_ROOT := $(CACHE)/collections
DEPS_STAMP := $(DEPS_ROOT)/.unpacked.json

# The repository seen as ansible_collections/rebootless/windows (symlink; conftest.py makes the same one).
LINK_ROOT := $(CURDIR)/.collections
LINK := $(LINK_ROOT)/ansible_collections/rebootless/windows
LINK_REL := .collections/ansible_collections/rebootless/windows
# ansible-test needs a real copy at such a path: scripts/ci/sanity.sh makes it under $(CACHE)/ansible_collections.
SANITY_PYTHON ?= 3.11
# Managed hosts run the engine on CPython 3.8+ (see README): checked with the oldest and the newest we support.
SANITY_HOST_PYTHONS ?= 3.8 3.13

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(LINK_ROOT):$(DEPS_ROOT)
export ANSIBLE_NOCOLOR ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export WINEDEBUG ?= -all
export WINEDLLOVERRIDES ?= mscoree,mshtml=
unexport DISPLAY

# Folders mypy checks, when they hold Python files.
MYPY_DIRS := $(foreach d,plugins demo tests bench scripts,$(if $(shell find $(d) -name '*.py' -print -quit 2>/dev/null),$(d)))
CHECKS := lint unit integration sanity ansible-lint molecule changelog-lint galaxy-build docs-check

.PHONY: help deps venv collections link lint unit integration sanity ansible-lint molecule changelog-lint \
	galaxy-build docs-check test demo clean distclean

help:
	@echo "make demo    bring up the demo fleet and run the hotpatch job (installs what it needs first)"
	@echo "make test    run every CI check and print a summary (what .ci/run runs)"
	@echo "setup:       deps venv collections"
	@echo "checks:      $(CHECKS)"
	@echo "cleanup:     clean (caches, build output) distclean (also .venv)"

## ---- setup -------------------------------------------------------------------------------------------------

deps:
	@SYSTEM_PYTHON=$(SYSTEM_PYTHON) scripts/ci/apt_deps.sh bindep.txt

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements/ci.txt requirements.txt
	@$(SYSTEM_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11) and "venv: ansible-core 2.19 needs Python >= 3.11; set SYSTEM_PYTHON" or 0)'
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements/ci.txt
	$(PY) -m pip check
	@touch $@

collections: $(DEPS_STAMP)

$(DEPS_STAMP): $(BUNDLE_REQ) | $(VENV_STAMP)
	@test -n "$(BUNDLE_VERSION)" || { echo "collections: no ansible==X.Y.Z pin in $(BUNDLE_REQ)" >&2; exit 1; }
	@test -f $(BUNDLE_WHEEL) || $(PY) -m pip download --quiet --no-deps --only-binary=:all: \
		--dest $(CACHE)/wheels -r $(BUNDLE_REQ)
	$(PY) scripts/ci/unpack_collections.py $(BUNDLE_WHEEL) $(DEPS_ROOT) $(DEP_COLLECTIONS)

link:
	@$(SYSTEM_PYTHON) -c "import conftest" # makes $(LINK) -> repository, tolerating a stale link

## ---- checks ------------------------------------------------------------------------------------------------

# Every tool runs even when one fails, so one pass shows every problem.
lint: link
	@rc=0; set -x; \
	$(BIN)/ruff check . || rc=1; \
	$(BIN)/ruff format --check . || rc=1; \
	shellcheck .ci/run scripts/ci/*.sh || rc=1; \
	$(if $(MYPY_DIRS),$(BIN)/mypy $(addprefix $(LINK_REL)/,conftest.py $(MYPY_DIRS)) | sed 's|^$(LINK_REL)/||' || rc=1;,echo "mypy: no Python files yet";) \
	exit $$rc

unit:
	@scripts/ci/pytest_suite.sh $(PY) tests/unit

integration:
	@scripts/ci/pytest_suite.sh $(PY) tests/integration

# Full sanity on the controller Python; then compile + import of host code (modules, module_utils) on the oldest
# and newest host Pythons we promise, so a 3.9+ construct or a removed stdlib module cannot reach a host.
sanity: collections
	@scripts/ci/sanity.sh $(CURDIR)/$(BIN) $(CACHE) $(DEPS_ROOT) $(SANITY_PYTHON) "$(SANITY_HOST_PYTHONS)" $(SANITY_ARGS)

ansible-lint: link collections
	@targets="$$(for d in roles playbooks; do [[ -d $$d ]] && echo $$d; done || true)"; \
	if [[ -z "$$targets" ]]; then echo "ansible-lint: no roles/ or playbooks/ yet: 0 files linted"; \
	else set -x; $(BIN)/ansible-lint --offline --profile production $$targets; fi

molecule: link collections
	@scripts/ci/molecule_all.sh $(BIN)

changelog-lint:
	$(BIN)/antsibull-changelog lint

galaxy-build:
	@rm -rf $(CACHE)/dist
	$(BIN)/ansible-galaxy collection build --force --output-path $(CACHE)/dist
	$(PY) scripts/ci/check_artifact.py $(CACHE)/dist/rebootless-windows-*.tar.gz

docs-check: link collections
	$(PY) scripts/ci/docs_check.py $(BIN)/ansible-doc

## ---- entry points ------------------------------------------------------------------------------------------

# Continues past failures, prints a table of every step, exits non-zero if any failed.
test:
	@$(SYSTEM_PYTHON) scripts/ci/run_checks.py --setup deps venv collections -- $(CHECKS)

# make demo DEMO_ARGS="--base-port 0" (free ports) or REBOOTLESS_DEMO_BASE_PORT=P make demo; stop: demo/fleet.py down
DEMO_ARGS ?=
demo: deps venv collections
	@test -f demo/demo.py || { echo "demo: demo/demo.py does not exist yet (the demo fleet is still being built)" >&2; exit 1; }
	$(PY) demo/demo.py $(DEMO_ARGS)

clean:
	rm -rf .cache .collections tests/output .ansible .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
