# fleetsplit.k0s developer entry points. Everything installs itself: a fresh clone needs only
# python3, make and (for fixtures and test hosts) root with apt.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
COLLECTION_LINK := .build/collections/ansible_collections/fleetsplit/k0s
FIXTURES := .cache/fixtures
export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.build/collections

.PHONY: all venv venv-compat collection fixtures deploy test test-unit test-compat test-molecule test-hosts bench clean

all: test

venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

# Oldest supported ansible-core, for test-compat.
venv-compat: .venv-compat/.stamp
.venv-compat/.stamp: requirements-compat.txt
	$(PYTHON) -m venv .venv-compat
	.venv-compat/bin/pip install --disable-pip-version-check -q -r requirements-compat.txt
	touch $@

collection: $(COLLECTION_LINK)
$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../../.. $@

fixtures: venv
	$(BIN)/python tests/fixtures/build_fixtures.py --out $(FIXTURES)

# The main job on its embedded default: no inventory, so deploy-k0s.yml writes an overlay.
deploy: venv collection fixtures
	$(BIN)/ansible-playbook playbooks/deploy-k0s.yml

test: test-unit test-compat test-molecule

test-unit: venv collection fixtures
	$(BIN)/pytest -q tests/unit tests/integration

# The integration tests again under the oldest supported ansible-core (they run the
# ansible-playbook next to the interpreter running pytest).
test-compat: venv-compat collection fixtures
	.venv-compat/bin/pytest -q tests/integration

test-hosts:
	scripts/prepare-test-hosts

test-molecule: venv collection fixtures test-hosts
	scripts/run-molecule

bench: venv collection fixtures
	$(BIN)/python benchmarks/split_bench.py
bench-fleet: venv collection fixtures test-hosts
	$(BIN)/python benchmarks/fleet_bench.py

clean:
	rm -rf .build out
