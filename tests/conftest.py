"""pytest setup for tests/unit and tests/integration: collection link and the genuine-format fixtures."""
import pytest

import testlib

testlib.ensure_collection_link()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "newest_core_only: no ansible-core-specific behaviour beyond what the rest of the run covers (pure "
                   "library and system tools, or one more variant of a playbook test); `make test-compat` deselects it")


@pytest.fixture(scope="session")
def fixtures():
    """{fixture id: {path, bare_path, version, format, binaries: {name: {size, sha256}}}}."""
    return testlib.load_fixtures()


@pytest.fixture(scope="session")
def fixture_index(fixtures):
    return fixtures


@pytest.fixture(scope="session")
def galaxy_tarball(tmp_path_factory):
    """The collection as Galaxy would ship it: `ansible-galaxy collection build` of this checkout."""
    out = tmp_path_factory.mktemp("galaxy-build")
    testlib.ansible_galaxy(["collection", "build", "--output-path", str(out), str(testlib.REPO)])
    (tarball,) = out.glob("fleetsplit-k0s-*.tar.gz")
    return tarball


@pytest.fixture(scope="session")
def installed_collection(galaxy_tarball, tmp_path_factory):
    """That tarball installed the way a Galaxy user installs it; returns the collections path."""
    dest = tmp_path_factory.mktemp("galaxy-installed")
    testlib.ansible_galaxy(["collection", "install", "--offline", "--force", "-p", str(dest), str(galaxy_tarball)])
    return dest


DEFLATE_ENGINES = ("isal", "zlib-ng", "zlib")   # payload/engines.py ORDER; zlib always runs


@pytest.fixture(params=DEFLATE_ENGINES)
def deflate_engine(request, monkeypatch):
    """Runs a test once per deflate engine the controller may use (the Engine is returned), selected the way users
    select it (FLEETSPLIT_DEFLATE_ENGINE). An engine not installed here is skipped; zlib alone always runs."""
    from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import engines
    assert engines.ORDER == DEFLATE_ENGINES
    found = engines.get(request.param, strict=False)
    if not isinstance(found, engines.Engine):
        pytest.skip("deflate engine %s not installed here: %s" % (request.param, found))
    monkeypatch.setenv(engines.ENV, request.param)
    return found
