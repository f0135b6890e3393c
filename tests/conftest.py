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
