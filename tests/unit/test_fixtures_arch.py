"""Cross-architecture fixtures (issue 22 part B): arm64 and armhf k0s built like the amd64 ones.

tests/fixtures/build_fixtures.py set `arch`: Debian's arm64/armhf packages of runc and iptables fetched through a
private apt state (tests/fixtures/foreign_debs.py), the test k0s cross-compiled with GOARCH. k0s names its release
assets by Go's architecture (k0s-<version>-amd64, -arm64, -arm: the k0s repository's Makefile and
.github/workflows/release.yaml), the keys used here. The ELF machines are read by the collection's own payload
reader (pyelftools), not by the builder's header check. Real executables, real .debs, no mocks.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload as kp
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.elf import elf_machine

import testlib

sys.path.insert(0, str(testlib.REPO / "tests" / "fixtures"))
import build_fixtures  # noqa: E402
import foreign_debs  # noqa: E402

ARCH_SET = {"k0s-small-zip": ("amd64", "x86_64", "v1.36.3+k0s.0"),
            "k0s-small-zip-v2": ("amd64", "x86_64", "v1.36.4+k0s.0"),
            "k0s-small-zip-arm64": ("arm64", "aarch64", "v1.36.3+k0s.0"),
            "k0s-small-zip-v2-arm64": ("arm64", "aarch64", "v1.36.4+k0s.0"),
            "k0s-small-zip-arm": ("arm", "armv7l", "v1.36.3+k0s.0")}


def machine_of(path):
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        return elf_machine(ELFFile(f))


def test_arch_set_and_the_other_sets():
    assert set(build_fixtures.SETS["arch"]) == set(ARCH_SET)
    assert set(ARCH_SET) <= set(build_fixtures.SETS["all"])
    assert build_fixtures.SETS["small"] == ["k0s-small-zip", "k0s-small-legacy", "k0s-zip-next"]


@pytest.mark.parametrize("fid", sorted(ARCH_SET))
def test_arch_fixture_splits_into_binaries_of_its_architecture(fixtures, fid, tmp_path):
    key, machine, version = ARCH_SET[fid]
    fx = fixtures[fid]
    assert (fx["arch"], fx["elf_machine"], fx["version"], fx["format"]) == (key, machine, version, "zip")
    assert sorted(fx["binaries"]) == build_fixtures.SMALL_BINS
    payload = kp.inspect(fx["path"])
    assert (payload.elf_machine, payload.k0s_version) == (machine, version)
    result = kp.split(fx["path"], dest=str(tmp_path / "libexec"), stripped_executable=str(tmp_path / "k0s"),
                      streams_dest=str(tmp_path / "streams"))
    assert result["elf_machine"] == machine
    assert machine_of(tmp_path / "k0s") == machine
    got = {f["name"]: (machine_of(tmp_path / "libexec" / f["name"]), f["sha256"]) for f in result["files"]}
    assert got == {n: (machine, b["sha256"]) for n, b in fx["binaries"].items()}


def test_arch_pairs_share_versions_and_differ_in_runc_only(fixtures):
    """The upgrade pairs: v2 of each architecture changes runc alone (what an upgrade must send)."""
    for old, new in (("k0s-small-zip", "k0s-small-zip-v2"), ("k0s-small-zip-arm64", "k0s-small-zip-v2-arm64")):
        a, b = fixtures[old]["binaries"], fixtures[new]["binaries"]
        assert [n for n in sorted(a) if a[n]["sha256"] != b[n]["sha256"]] == ["runc"]
        assert b["runc"]["variant"] == "v2"
    # the two architectures embed different real files (not one set relabelled)
    amd, arm = fixtures["k0s-small-zip"]["binaries"], fixtures["k0s-small-zip-arm64"]["binaries"]
    assert all(amd[n]["sha256"] != arm[n]["sha256"] for n in amd)


def test_foreign_debs_come_from_debian_for_their_architecture(fixtures):
    manifest = json.loads((testlib.FIXTURES / "fixtures.json").read_text())
    debs = manifest["debs"]
    for pkg in ("runc", "iptables"):
        assert debs[pkg].endswith("_amd64.deb")
        assert debs[pkg + ":arm64"].startswith(pkg + "_") and debs[pkg + ":arm64"].endswith("_arm64.deb")
        assert debs[pkg + ":armhf"].endswith("_armhf.deb")
        # another architecture's .deb sits in .cache/debs/<arch>/: older builders glob .cache/debs/<pkg>_*.deb
        debs_dir = testlib.REPO / ".cache" / "debs"
        assert (debs_dir / "arm64" / debs[pkg + ":arm64"]).is_file()
        assert not list(debs_dir.glob(f"{pkg}_*_arm64.deb"))


def test_deb_for_never_picks_another_architecture(tmp_path):
    """Before: the newest-by-name <pkg>_*.deb, and _arm64 sorts after _amd64."""
    debs_dir = testlib.REPO / ".cache" / "debs"
    amd = foreign_debs.deb_for(debs_dir, "runc", "amd64")
    arm = foreign_debs.deb_for(debs_dir / "arm64", "runc", "arm64")
    for d in (amd, arm):
        shutil.copyfile(d, tmp_path / d.name)
    assert foreign_debs.deb_for(tmp_path, "runc", "amd64").name == amd.name
    assert foreign_debs.deb_for(tmp_path, "runc", "arm64").name == arm.name
    assert foreign_debs.deb_for(tmp_path, "runc", "armhf") is None


def test_check_elf_names_the_file_and_its_machine(fixtures):
    runc = fixtures["k0s-small-zip"]["binaries"]["runc"]["source"]
    foreign_debs.check_elf(runc, "amd64")
    with pytest.raises(foreign_debs.FixtureError, match=r"runc is not an ELF for arm64 \(aarch64\): ELF class 2, "
                                                        r"e_machine 62"):
        foreign_debs.check_elf(runc, "arm64")
    arm = fixtures["k0s-small-zip-arm"]["binaries"]["runc"]["source"]
    with pytest.raises(foreign_debs.FixtureError, match="ELF class 1, e_machine 40"):
        foreign_debs.check_elf(arm, "arm64")
    with pytest.raises(foreign_debs.FixtureError, match="not an ELF file"):
        foreign_debs.check_elf(testlib.REPO / "README.md", "amd64")


def test_private_sources_from_the_machines_apt_configuration(tmp_path):
    """deb822 and one-line sources; disabled stanzas and deb-src left out; the machine's files only read."""
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "# off\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (parts / "extra.list").write_text("deb-src http://src.example/debian bookworm main\n"
                                      "deb [signed-by=/k.gpg arch=amd64] http://sec.example/debian-security "
                                      "bookworm-security main\n")
    got = foreign_debs.mirror_sources("arm64", roots=(tmp_path / "sources.list", parts))
    assert got.splitlines() == [
        "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian "
        "bookworm main contrib",
        "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian "
        "bookworm-updates main contrib",
        "deb [arch=arm64 signed-by=/k.gpg] http://sec.example/debian-security bookworm-security main"]
    with pytest.raises(foreign_debs.FixtureError, match="no 'deb' source"):
        foreign_debs.mirror_sources("arm64", roots=(tmp_path / "none.list", tmp_path / "none.d"))


@pytest.mark.parametrize("fid", ["k0s-small-zip-arm64", "k0s-small-zip-arm"])
def test_foreign_test_k0s_stages_under_qemu_user(fixtures, fid, tmp_path):
    """The arm64/armhf test k0s runs through binfmt_misc (qemu-user-static) and stages its own binaries."""
    fx = fixtures[fid]
    if not foreign_debs.binfmt_enabled(fx["arch"]):
        pytest.skip(f"/proc/sys/fs/binfmt_misc/{foreign_debs.BINFMT[fx['arch']]} is not enabled")
    r = subprocess.run([fx["path"], "stage", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                       check=True, timeout=120)
    staged = json.loads(r.stdout)
    assert staged["version"] == fx["version"]
    assert {n: b["source"] for n, b in staged["binaries"].items()} == {n: "payload" for n in fx["binaries"]}
    assert {n: machine_of(Path(tmp_path) / "bin" / n) for n in fx["binaries"]} == \
        {n: fx["elf_machine"] for n in fx["binaries"]}
