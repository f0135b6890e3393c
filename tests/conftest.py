"""pytest setup for tests/unit and tests/integration: collection link and the genuine-format fixtures."""
import pytest

import testlib

testlib.ensure_collection_link()


@pytest.fixture(scope="session")
def fixtures():
    """{fixture id: {path, bare_path, version, format, binaries: {name: {size, sha256}}}}."""
    return testlib.load_fixtures()


@pytest.fixture(scope="session")
def fixture_index(fixtures):
    return fixtures
