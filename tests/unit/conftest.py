"""Shared test setup: the collection on sys.path and the genuine-format k0s fixtures."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO, ".build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "fleetsplit", "k0s")
FIXTURES = os.environ.get("FLEETSPLIT_FIXTURES", os.path.join(REPO, ".cache", "fixtures"))

if not os.path.lexists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink("../../../..", LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)


@pytest.fixture(scope="session")
def fixtures():
    """fixtures.json of tests/fixtures/build_fixtures.py (built on first use, cached after)."""
    index = os.path.join(FIXTURES, "fixtures.json")
    if not os.path.exists(index):
        subprocess.check_call([sys.executable, os.path.join(REPO, "tests", "fixtures", "build_fixtures.py"),
                               "--out", FIXTURES])
    with open(index) as f:
        return json.load(f)["fixtures"]
