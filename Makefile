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

.PHONY: all venv venv-compat collection test-collections fixtures deploy test test-unit test-compat test-molecule \
        test-hosts test-beside-molecule lint sanity readmes check-build rehearsal bench clean

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

# containers.podman (molecule's podman driver) and ansible.posix (callbacks), pinned, without Galaxy.
test-collections: venv collection
	$(BIN)/python scripts/install-test-collections

fixtures: venv
	$(BIN)/python tests/fixtures/build_fixtures.py --out $(FIXTURES)

# The main job on its embedded default: the test fixture k0s (named here, never a role default) and
# no inventory, so deploy-k0s.yml writes an overlay into ./out/overlay.
DEPLOY_K0S := $(FIXTURES)/k0s-zip
deploy: venv collection fixtures
	@echo "make deploy: NOTE: splitting the TEST FIXTURE $(DEPLOY_K0S) (a k0s look-alike built by" \
	  "'make fixtures', not a real k0s); for a real one: ansible-playbook deploy-k0s.yml -e k0s_executable=..."
	$(BIN)/ansible-playbook deploy-k0s.yml -e k0s_executable=$(CURDIR)/$(DEPLOY_K0S)

# ansible-lint first (fast, it fails on what a reviewer would see), then the molecule scenarios with ansible-test
# sanity, test-unit and test-compat beside them (scripts/test-beside-molecule). test-hosts installs every package the
# tests need (podman, runc, ...) before any test runs.
test: test-hosts lint test-beside-molecule

# ansible-lint --profile production (.ansible-lint), offline.
lint: venv test-collections
	$(BIN)/ansible-lint --profile production

# ansible-test sanity on a clean copy of the tracked files (scripts/sanity), with the newest and the
# oldest supported ansible-core (2.16 also compiles and imports the modules on Python 3.6 and 3.7).
sanity: venv venv-compat
	scripts/sanity
	FLEETSPLIT_SANITY_VENV=.venv-compat scripts/sanity

test-unit: venv collection test-collections fixtures
	$(BIN)/pytest -q tests/unit tests/integration

# The integration tests again under the oldest supported ansible-core (they run the ansible-playbook
# next to the interpreter running pytest), plus the host Python floor: under 2.16 it runs the host
# modules on a real Python 3.6 where one exists. Tests marked newest_core_only (tests/conftest.py) run once, above.
test-compat: venv-compat collection fixtures
	.venv-compat/bin/pytest -q -m "not newest_core_only" tests/integration tests/unit/test_host_python_floor.py

test-hosts:
	scripts/prepare-test-hosts

# sanity, test-unit and test-compat (one after the other) beside test-molecule (molecule mostly waits on hosts).
test-beside-molecule: venv venv-compat collection test-collections fixtures test-hosts
	scripts/test-beside-molecule

test-molecule: venv collection test-collections fixtures test-hosts
	scripts/run-molecule

bench: venv collection fixtures
	$(BIN)/python benchmarks/split_bench.py
	$(BIN)/python benchmarks/provenance_bench.py
	$(BIN)/python benchmarks/nochange_bench.py
	$(BIN)/python benchmarks/k3s_bench.py
bench-fleet: venv collection test-collections fixtures test-hosts
	$(BIN)/python benchmarks/fleet_bench.py

# Role READMEs from meta/argument_specs.yml (run after changing a spec; a unit test fails on drift).
readmes: venv
	$(BIN)/python scripts/role-readmes

# The Galaxy tarball: size, file summary, and a failure if a developer file would ship.
check-build: venv
	scripts/check-build

# Fresh-machine rehearsal: remove what the project installs, fresh clone, CI=true .ci/run (as root).
# Destructive for this machine's podman state and the project's caches: the target's name is the consent.
rehearsal:
	scripts/fresh-machine-rehearsal --yes

clean:
	rm -rf .build out
