"""Airgap image bundles (issue 13 item 5): the controller cache (payload/image_cache.py) and the host library
(k0s_images.py) on real tar files built from real files at test time, real bundles, real directories.

k0s's rules followed (pkg/component/worker/ocibundle.go): every file in <data-dir>/images is imported and
remembered by path and mtime; an image whose bundle files are gone is unpinned.
"""
import json
import os
import tarfile

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_images as ki
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.bundles import write_bundle
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload.image_cache import image_stream, prune, prune_bundles

# The controller compresses each tar with every deflate engine installed and with zlib alone (tests/conftest.py);
# the host side inflates it with zlib either way.
pytestmark = pytest.mark.usefixtures("deflate_engine")


def make_tar(path, *members):
    """A real tar of real files (as an image bundle is a tar of an OCI layout)."""
    with tarfile.open(str(path), "w") as t:
        for m in members:
            t.add(m, arcname=os.path.basename(m))
    return str(path)


@pytest.fixture
def lab(tmp_path):
    class Lab(object):
        cache = str(tmp_path / "cache")
        images = str(tmp_path / "root" / "var" / "lib" / "k0s" / "images")

        def tar(self, name, *members):
            return make_tar(tmp_path / name, *(members or ("/bin/ls",)))

        def streams(self, *tars):
            os.makedirs(self.cache, mode=0o700, exist_ok=True)
            return [image_stream(t, self.cache) for t in tars]

        def deploy(self, infos, check_mode=False, keep_stale=False):
            """What the role does: query, bundle what is missing, apply."""
            q = ki.query(self.images, infos)
            bundle = None
            if q["missing"]:
                bundle = write_bundle([(i["name"], i["stream"], i["stream_sha256"]) for i in infos
                                       if i["name"] in q["missing"]], os.path.join(self.cache, "bundles"))
            return q, bundle, ki.apply(self.images, infos, bundle and bundle["path"], bundle and bundle["members"],
                                       check_mode=check_mode, keep_stale=keep_stale)
    os.makedirs(str(tmp_path / "root" / "var" / "lib" / "k0s"))
    return Lab()


def listing(d):
    return sorted(os.listdir(d))


def test_fresh_deploy_writes_bundle_with_stable_mtime_and_record(lab):
    a = lab.tar("a.tar", "/bin/ls", "/bin/cat")
    (info,) = lab.streams(a)
    q, bundle, r = lab.deploy([info])
    assert q["missing"] == ["a.tar"] and r["changed"]
    assert [m["name"] for m in bundle["members"]] == ["a.tar"]
    path = os.path.join(lab.images, "a.tar")
    with open(path, "rb") as f, open(a, "rb") as g:
        assert f.read() == g.read()
    st = os.stat(path)
    assert st.st_mtime_ns == ki.stable_mtime_ns(info["sha256"]) and oct(st.st_mode & 0o777) == "0o644"
    record = json.load(open(ki.record_path(lab.images)))
    assert record["placed"]["a.tar"]["sha256"] == info["sha256"]
    # A re-run: nothing missing, nothing written, mtime unchanged (k0s would not re-import).
    q2, bundle2, r2 = lab.deploy([info])
    assert q2["up_to_date"] and bundle2 is None and not r2["changed"]
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


def test_mtime_drift_and_content_change_are_missing(lab):
    (info,) = lab.streams(lab.tar("a.tar"))
    lab.deploy([info])
    path = os.path.join(lab.images, "a.tar")
    os.utime(path, None)   # touched: k0s would re-import it, so it is not right
    assert ki.query(lab.images, [info])["missing"] == ["a.tar"]
    lab.deploy([info])
    assert os.stat(path).st_mtime_ns == ki.stable_mtime_ns(info["sha256"])
    # Same name, other content: another stable mtime, so k0s imports the new content.
    (info2,) = lab.streams(lab.tar("a2.tar", "/bin/cat"))
    info2 = dict(info2, name="a.tar")
    assert ki.stable_mtime_ns(info2["sha256"]) != ki.stable_mtime_ns(info["sha256"])
    q, bundle, r = lab.deploy([info2])
    assert q["missing"] == ["a.tar"] and os.stat(path).st_mtime_ns == ki.stable_mtime_ns(info2["sha256"])


def test_upgrade_removes_old_bundle_keeps_foreign_files(lab):
    old, new = lab.streams(lab.tar("k0s-airgap-bundle-v1.36.1-linux-amd64.tar"),
                           lab.tar("k0s-airgap-bundle-v1.36.2-linux-amd64.tar", "/bin/cat"))
    lab.deploy([old])
    foreign = os.path.join(lab.images, "mine.tar")
    with open(foreign, "wb") as f:
        f.write(b"placed by the operator")
    q = ki.query(lab.images, [new])
    assert q["missing"] == [new["name"]] and q["stale"] == [old["name"]] and q["foreign"] == ["mine.tar"]
    lab.deploy([new])
    assert listing(lab.images) == sorted([new["name"], "mine.tar"])
    assert list(json.load(open(ki.record_path(lab.images)))["placed"]) == [new["name"]]
    # An empty list removes what fleetsplit placed, never the operator's file.
    q, bundle, r = lab.deploy([])
    assert r["changed"] and listing(lab.images) == ["mine.tar"]


def test_staged_upgrade_keeps_the_old_bundle_until_pruned(lab):
    """An upgrade stages with keep_stale (a rollback still finds the old images pinned); the prune after the
    gate removes the old bundle; a staged re-run changes nothing."""
    old, new = lab.streams(lab.tar("old.tar"), lab.tar("new.tar", "/bin/cat"))
    lab.deploy([old])
    old_mtime = os.stat(os.path.join(lab.images, "old.tar")).st_mtime_ns
    q, bundle, r = lab.deploy([new], keep_stale=True)
    assert r["changed"] and r["kept_stale"] == ["old.tar"] and r["stale"] == []
    assert listing(lab.images) == ["new.tar", "old.tar"]
    assert os.stat(os.path.join(lab.images, "old.tar")).st_mtime_ns == old_mtime   # k0s keeps it pinned
    assert sorted(json.load(open(ki.record_path(lab.images)))["placed"]) == ["new.tar", "old.tar"]
    q, bundle, r = lab.deploy([new], keep_stale=True)
    assert bundle is None and not r["changed"]
    q, bundle, r = lab.deploy([new])
    assert r["changed"] and listing(lab.images) == ["new.tar"]
    assert list(json.load(open(ki.record_path(lab.images)))["placed"]) == ["new.tar"]


def test_check_mode_changes_nothing(lab):
    old, new = lab.streams(lab.tar("old.tar"), lab.tar("new.tar", "/bin/cat"))
    lab.deploy([old])
    before = {n: os.stat(os.path.join(lab.images, n)).st_mtime_ns for n in listing(lab.images)}
    q, bundle, r = lab.deploy([new], check_mode=True)
    assert r["changed"] and r["missing"] == ["new.tar"] and r["stale"] == ["old.tar"]
    assert {n: os.stat(os.path.join(lab.images, n)).st_mtime_ns for n in listing(lab.images)} == before


@pytest.mark.parametrize("name", ["a.tar.gz", "../a.tar", "sub/a.tar", ".hidden.tar", ".tar", "a\nb.tar", ""])
def test_names_refused(name):
    with pytest.raises(ki.ImageError) as e:
        ki.check_image_name(name)
    assert ".tar" in str(e.value)


def test_duplicate_and_bad_items_refused_before_any_change(lab):
    (info,) = lab.streams(lab.tar("a.tar"))
    with pytest.raises(ki.ImageError, match="listed twice"):
        ki.apply(lab.images, [info, info])
    with pytest.raises(ki.ImageError, match="no valid sha256"):
        ki.query(lab.images, [dict(info, sha256="x")])
    assert not os.path.exists(lab.images)


def test_bundle_without_a_missing_member_refused_before_any_change(lab):
    a, b = lab.streams(lab.tar("a.tar"), lab.tar("b.tar", "/bin/cat"))
    lab.deploy([a])
    only_b = write_bundle([(b["name"], b["stream"], b["stream_sha256"])], os.path.join(lab.cache, "bundles"))
    c = lab.streams(lab.tar("c.tar", "/bin/echo"))[0]
    with pytest.raises(ki.ImageError, match="does not hold c.tar"):
        ki.apply(lab.images, [b, c], only_b["path"], only_b["members"])
    assert listing(lab.images) == ["a.tar"]   # a.tar (stale) still there: nothing changed


def test_corrupt_stream_leaves_no_partial_file(lab):
    (info,) = lab.streams(lab.tar("a.tar"))
    bad = dict(info, sha256="0" * 64)
    bundle = write_bundle([(info["name"], info["stream"], info["stream_sha256"])], os.path.join(lab.cache, "bundles"))
    with pytest.raises(ki.ImageError, match="unusable"):
        ki.apply(lab.images, [bad], bundle["path"], bundle["members"])
    assert listing(lab.images) == [] and listing(os.path.dirname(lab.images)) == [ki.RECORD, "images"]   # no temporary file left


def test_unreadable_record_refused(lab):
    os.makedirs(lab.images)
    with open(ki.record_path(lab.images), "w") as f:
        f.write("not json")
    with pytest.raises(ki.ImageError, match="not a fleetsplit record"):
        ki.query(lab.images, [])


def test_controller_cache_reuses_stream_and_prunes(lab):
    a = lab.tar("a.tar")
    (first,) = lab.streams(a)
    assert first["changed"] and oct(os.stat(os.path.dirname(first["stream"])).st_mode & 0o777) == "0o700"
    (again,) = lab.streams(a)
    assert not again["changed"] and again["stream_sha256"] == first["stream_sha256"]
    others = lab.streams(lab.tar("b.tar", "/bin/cat"), lab.tar("c.tar", "/bin/echo"))
    removed = prune(lab.cache, set([others[1]["sha256"]]), 2)
    assert removed == [os.path.dirname(first["stream"])]


def test_per_host_bundles_are_bounded(lab):
    a, b, c = lab.streams(lab.tar("a.tar"), lab.tar("b.tar", "/bin/cat"), lab.tar("c.tar", "/bin/echo"))
    dest = os.path.join(lab.cache, "bundles")
    made = [write_bundle([(i["name"], i["stream"], i["stream_sha256"])], dest) for i in (a, b, c)]
    for n, bundle in enumerate(made):   # oldest first
        for path in (bundle["path"], bundle["path"][:-len(".bundle")] + ".json"):
            os.utime(path, (1000 + n, 1000 + n))
    foreign = os.path.join(dest, "notes.txt")
    open(foreign, "w").close()
    # a (oldest) is in use by this run, c is the newest other one: b goes, with its sidecar
    removed = prune_bundles(dest, set([made[0]["id"]]), 1)
    gone = made[1]["path"][:-len(".bundle")]
    assert removed == [gone + ".bundle", gone + ".json"]
    assert sorted(os.listdir(dest)) == sorted([os.path.basename(made[0]["path"]), made[0]["id"] + ".json",
                                               os.path.basename(made[2]["path"]), made[2]["id"] + ".json",
                                               "notes.txt"])


def test_symlink_in_place_of_a_bundle_refused_before_any_change(lab, tmp_path):
    a, b = lab.streams(lab.tar("a.tar"), lab.tar("b.tar", "/bin/cat"))
    lab.deploy([a])
    os.symlink("/etc/passwd", os.path.join(lab.images, "b.tar"))
    bundle = write_bundle([(b["name"], b["stream"], b["stream_sha256"])], os.path.join(lab.cache, "bundles"))
    with pytest.raises(ki.ImageError, match="b.tar is not a regular file"):
        ki.apply(lab.images, [b], bundle["path"], bundle["members"])
    assert listing(lab.images) == ["a.tar", "b.tar"] and os.path.islink(os.path.join(lab.images, "b.tar"))


def test_a_placed_bundle_replaced_by_someone_else_is_kept(lab):
    old, new = lab.streams(lab.tar("old.tar"), lab.tar("new.tar", "/bin/cat"))
    lab.deploy([old])
    with open(os.path.join(lab.images, "old.tar"), "wb") as f:
        f.write(b"the operator's own old.tar")
    q = ki.query(lab.images, [new])
    assert q["stale"] == [] and q["foreign"] == ["old.tar"]
    lab.deploy([new])
    assert listing(lab.images) == ["new.tar", "old.tar"]
    assert list(json.load(open(ki.record_path(lab.images)))["placed"]) == ["new.tar"]
