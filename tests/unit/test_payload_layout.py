"""The next k0s zip layout (issue 13 item 4): binaries under bin/, image bundles under images/.

Upstream (k0s branch feature/zip-embedded-images): hack/zip-files/main.go names entries "bin/" + base name;
pkg/assets/stage.go opens EmbeddedBinDir + "/" + name; pkg/component/worker/ocibundle.go imports the
files directly under the payload's "images" directory; docs/airgap-install.md adds bundles with Info-ZIP's
`zip -A` and `zip -0`. The fixture k0s-zip-next is packed that way (tests/fixtures/build_fixtures.py).
Real executables and real zip archives, no mocks.
"""
import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload as kp

# Every test here runs under each deflate engine installed (isal, zlib-ng) and under zlib alone (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("deflate_engine")


@pytest.fixture
def nxt(fixtures):
    return fixtures["k0s-zip-next"]


def test_next_layout_splits_binaries_and_images_apart(tmp_path, nxt):
    payload = kp.inspect(nxt["path"])
    assert [e.name for e in payload.entries] == sorted(nxt["binaries"])
    assert [e.name for e in payload.images] == sorted(nxt["images"])
    result = kp.split(nxt["path"], dest=str(tmp_path / "libexec"), stripped_executable=str(tmp_path / "bin" / "k0s"),
                      streams_dest=str(tmp_path / "streams"), images_dest=str(tmp_path / "images"))
    assert dict((f["name"], f["sha256"]) for f in result["files"]) == \
        dict((n, b["sha256"]) for n, b in nxt["binaries"].items())
    assert [(i["name"], i["size"], i["sha256"], i["path"]) for i in result["images"]] == \
        [(n, b["size"], b["sha256"], str(tmp_path / "images" / n)) for n, b in sorted(nxt["images"].items())]
    # Binaries and streams hold only binaries; the bundle is a real tar of the files the fixture lists.
    assert sorted(os.listdir(tmp_path / "libexec")) == sorted(nxt["binaries"])
    assert sorted(os.listdir(tmp_path / "streams" / "libexec")) == sorted(n + ".gz" for n in nxt["binaries"])
    bundle = tmp_path / "images" / "fixture-bundle.tar"
    assert os.stat(bundle).st_mode & 0o777 == 0o644
    with tarfile.open(bundle) as tar:
        assert tar.getnames() == nxt["images"]["fixture-bundle.tar"]["files"]
    assert kp.sha256_file(str(tmp_path / "bin" / "k0s")) == kp.sha256_file(nxt["bare_path"])


def test_next_layout_without_images_dest_reports_images_and_writes_none(tmp_path, nxt):
    result = kp.split(nxt["path"], dest=str(tmp_path / "libexec"))
    assert [(i["name"], i["sha256"], i["path"]) for i in result["images"]] == \
        [(n, b["sha256"], None) for n, b in sorted(nxt["images"].items())]
    assert sorted(os.listdir(tmp_path)) == ["libexec"]
    assert sorted(os.listdir(tmp_path / "libexec")) == sorted(nxt["binaries"])


def test_damaged_image_is_healed_alone(tmp_path, nxt):
    kw = dict(dest=str(tmp_path / "libexec"), images_dest=str(tmp_path / "images"))
    kp.split(nxt["path"], **kw)
    bundle = tmp_path / "images" / "fixture-bundle.tar"
    bundle.write_bytes(b"not a tar")
    dry = kp.split(nxt["path"], write=False, **kw)
    assert dry["healed"] == [str(bundle)] and [i["changed"] for i in dry["images"]] == [True]
    again = kp.split(nxt["path"], **kw)
    assert again["healed"] == [str(bundle)]
    assert kp.sha256_file(str(bundle)) == nxt["images"]["fixture-bundle.tar"]["sha256"]
    assert [i["changed"] for i in kp.split(nxt["path"], **kw)["images"]] == [False]


def _with_zip(tmp_path, bare, names):
    """The fixture's bare k0s with a zip of ``names`` appended by Python's zipfile (deflate; real bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            zf.writestr(name, b"" if name.endswith("/") else ("content of %s\n" % name).encode() * 50)
    blob = buf.getvalue()
    path = tmp_path / "k0s"
    with open(bare, "rb") as f:
        head = f.read()
    path.write_bytes(head + blob)
    return str(path)


@pytest.mark.parametrize("names,message", [
    (["kubelet", "bin/kubelet"], "binary 'kubelet' occurs twice \\(as 'kubelet' and 'bin/kubelet'\\)"),
    (["bin/runc", "bin/runc"], "occurs twice"),
    (["bin/sub/runc"], "'bin/sub/runc' is a path"),
    (["images/a/b.tar"], "'images/a/b.tar' is a path"),
    (["lib/runc"], "'lib/runc' is a path: only <name> and bin/<name>"),
    (["/runc"], "'/runc' is a path"),
    (["bin/.."], "not a file name"),
    (["images/"], None),            # a directory entry is skipped, not refused
])
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_next_layout_names(tmp_path, nxt, names, message):
    path = _with_zip(tmp_path, nxt["bare_path"], ["bin/runc"] + names if names[0] != "bin/runc" else names)
    if message is None:
        payload = kp.inspect(path)
        assert [e.name for e in payload.entries] == ["runc"] and payload.images == []
        return
    dest = tmp_path / "dest"
    with pytest.raises(kp.PayloadError, match=message):
        kp.split(path, dest=str(dest))
    assert not dest.exists()


def test_image_and_binary_may_share_a_base_name(tmp_path, nxt):
    path = _with_zip(tmp_path, nxt["bare_path"], ["bin/runc", "images/runc"])
    result = kp.split(path, dest=str(tmp_path / "libexec"), images_dest=str(tmp_path / "images"))
    assert [f["name"] for f in result["files"]] == ["runc"] and [i["name"] for i in result["images"]] == ["runc"]
    want = hashlib.sha256(b"content of images/runc\n" * 50).hexdigest()
    assert kp.sha256_file(str(tmp_path / "images" / "runc")) == want
