"""The host side of deploy_sysext (plugins/module_utils/k0s_sysext.py) on real files in a temporary directory:
the store layout, the link switch, bounded retention, and every refusal the query reports before the first
change. What needs systemd-sysext itself (refresh, status, the unit) runs in the molecule scenario `sysext`
on a real systemd host (docs/sysext-hosts.md).
"""
import hashlib
import os
import stat

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_sysext as ks


def image_bytes(tag):
    """Real content: an executable of this machine plus a tag, so each 'image' differs."""
    with open("/bin/ls", "rb") as f:
        return f.read() + tag.encode()


@pytest.fixture
def lab(tmp_path):
    class Lab(object):
        root = tmp_path
        tools = tmp_path / "tools"
        host = ks.Host(store_dir=str(tmp_path / "var/lib/fleetsplit-k0s/sysext"),
                       extensions_dir=str(tmp_path / "var/lib/extensions"),
                       release_store=str(tmp_path / "var/lib/fleetsplit-k0s"),
                       bin_dir=str(tmp_path / "usr/bin"), unit_dir=str(tmp_path / "etc/systemd/system"),
                       search_dirs=[str(tmp_path / "etc/extensions"), str(tmp_path / "run/extensions"),
                                    str(tmp_path / "var/lib/extensions")],
                       proc=str(tmp_path / "proc"), tool_path=str(tmp_path / "tools"))

        def upload(self, tag):
            data = image_bytes(tag)
            path = tmp_path / ("upload-" + tag)
            path.write_bytes(data)
            return str(path), {"name": "k0s", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                               "architecture": ks.host_architecture()}

        def store(self, tag):
            """What present does before activation: query, store when missing, switch the link, prune."""
            src, image = self.upload(tag)
            plan = ks.query(self.host, image, "k0scontroller", merged_check=False)
            assert plan["problems"] == []
            if plan["transfer"]:
                ks.put_image(self.host, image, src)
            if plan["switch"]:
                ks.switch_link(self.host, "k0s", plan["wanted"], plan["current"])
            prev = plan["current"] or plan["previous"]
            removed = ks.prune(self.host, "k0s", set(f for f in (plan["wanted"], prev) if f))
            return image, plan, removed

    (tmp_path / "proc").mkdir()
    # A systemd-sysext that exists for the query's presence check (never run here: merged_check=False).
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "systemd-sysext").write_bytes(b"#!/bin/sh\nexit 0\n")
    (tools / "systemd-sysext").chmod(0o755)
    return Lab()


def store_files(lab):
    return sorted(f for f in os.listdir(lab.host.store_dir) if f.endswith(".raw"))


def test_first_image_is_stored_by_content_and_linked(lab):
    image, plan, removed = lab.store("one")
    want = "k0s-%s.raw" % image["sha256"][:16]
    assert plan["transfer"] and plan["switch"] and plan["current"] is None
    assert store_files(lab) == [want]
    st = os.stat(lab.host.store_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700
    link = os.path.join(lab.host.extensions_dir, "k0s.raw")
    assert os.readlink(link) == os.path.join(lab.host.store_dir, want)
    with open(link, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == image["sha256"]
    assert not [f for f in os.listdir(lab.host.store_dir) if ".fleetsplit-tmp-" in f]
    again = ks.query(lab.host, image, "k0scontroller", merged_check=False)
    assert not again["transfer"] and not again["switch"] and again["current"] == want


def test_upgrade_keeps_previous_and_prunes_older(lab):
    one = lab.store("one")[0]
    two, plan2, removed2 = lab.store("two")
    f1, f2 = ("k0s-%s.raw" % i["sha256"][:16] for i in (one, two))
    assert plan2["current"] == f1 and removed2 == []
    assert store_files(lab) == sorted([f1, f2])
    assert os.readlink(lab.host.mark_path("k0s", "previous")) == f1
    three, plan3, removed3 = lab.store("three")
    f3 = "k0s-%s.raw" % three["sha256"][:16]
    assert removed3 == [f1]
    assert store_files(lab) == sorted([f2, f3])
    q = ks.query(lab.host, three, "k0scontroller", merged_check=False)
    assert q["current"] == f3 and q["previous"] == f2


def test_back_to_the_previous_image_needs_no_transfer(lab):
    one = lab.store("one")[0]
    lab.store("two")
    plan = ks.query(lab.host, one, "k0scontroller", merged_check=False)
    assert not plan["transfer"] and plan["switch"]


def test_files_the_store_did_not_write_are_never_pruned(lab):
    lab.store("one")
    mine = os.path.join(lab.host.store_dir, "notes.raw")
    open(mine, "w").close()
    other = os.path.join(lab.host.store_dir, "other-0123456789abcdef.raw")
    open(other, "w").close()
    lab.store("two")
    lab.store("three")
    assert os.path.exists(mine) and os.path.exists(other)


def test_broken_upload_is_refused_and_leaves_nothing(lab):
    src, image = lab.upload("one")
    with open(src, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    with pytest.raises(ks.SysextError, match="sha256"):
        ks.put_image(lab.host, image, src)
    assert os.listdir(lab.host.store_dir) == []
    short = dict(image, size=image["size"] + 1)
    with pytest.raises(ks.SysextError, match="bytes"):
        ks.put_image(lab.host, short, src)


def test_tampered_store_is_refused_before_switching(lab):
    one = lab.store("one")[0]
    lab.store("two")
    path = os.path.join(lab.host.store_dir, "k0s-%s.raw" % one["sha256"][:16])
    with open(path, "r+b") as f:
        f.write(b"Z")
    with pytest.raises(ks.SysextError, match="store was modified"):
        ks.verify_stored(lab.host, one)


def problems(lab, image=None, unit="k0scontroller"):
    image = image or lab.upload("one")[1]
    return " | ".join(ks.query(lab.host, image, unit, merged_check=False)["problems"])


def test_foreign_file_at_the_link_path_is_refused(lab):
    os.makedirs(lab.host.extensions_dir)
    link = os.path.join(lab.host.extensions_dir, "k0s.raw")
    with open(link, "wb") as f:
        f.write(b"someone else's image")
    assert "is not a link into" in problems(lab) and "never overwritten" in problems(lab)
    os.unlink(link)
    os.symlink("/srv/k0s-0123456789abcdef.raw", link)
    assert "-> /srv/k0s-0123456789abcdef.raw" in problems(lab)


def test_shadowing_image_in_etc_or_run_is_refused(lab):
    d = str(lab.root / "run/extensions")
    os.makedirs(os.path.join(d, "k0s"))
    assert "run/extensions/k0s shadows" in problems(lab)


def test_release_store_install_is_refused_naming_reset(lab):
    rs = lab.host.release_store
    os.makedirs(os.path.join(rs, "releases/v1"))
    os.makedirs(lab.host.bin_dir)
    os.symlink(os.path.join(rs, "current/bin/k0s"), os.path.join(lab.host.bin_dir, "k0s"))
    msg = problems(lab)
    assert "reset_k0s" in msg and "usr/bin/k0s ->" in msg
    os.symlink("releases/v1", os.path.join(rs, "current"))
    assert "fleetsplit-k0s/current exists" in problems(lab)


def test_release_store_unit_and_process_are_refused(lab):
    os.makedirs(lab.host.unit_dir)
    open(os.path.join(lab.host.unit_dir, "k0sworker.service"), "w").close()
    assert "k0sworker.service exists" in problems(lab)
    os.unlink(os.path.join(lab.host.unit_dir, "k0sworker.service"))
    exe = os.path.join(lab.host.release_store, "releases/v1/bin/k0s")
    os.makedirs(os.path.dirname(exe))
    with open(exe, "wb") as f:
        f.write(image_bytes("k0s"))
    os.makedirs(str(lab.root / "proc/4242"))
    os.symlink(exe, str(lab.root / "proc/4242/exe"))
    assert "process 4242 runs" in problems(lab)


def test_other_architecture_and_bad_arguments_are_refused(lab):
    image = lab.upload("one")[1]
    other = "arm64" if ks.host_architecture() != "arm64" else "x86-64"
    assert "ARCHITECTURE=%s" % other in problems(lab, dict(image, architecture=other))
    assert problems(lab, dict(image, architecture="_any")) == ""
    assert "not a plain extension name" in problems(lab, dict(image, name="../k0s"))
    assert "64 lowercase hex" in problems(lab, dict(image, sha256="abc"))
    assert "neither k0scontroller" in problems(lab, image, unit="k0s")


def test_missing_systemd_sysext_is_refused(lab):
    os.unlink(str(lab.tools / "systemd-sysext"))
    assert "systemd-sysext is not installed" in problems(lab)


def test_world_writable_store_is_refused(lab):
    os.makedirs(lab.host.store_dir)
    os.chmod(lab.host.store_dir, 0o777)
    assert "world-writable" in problems(lab)


def test_query_reports_every_refusal_at_once(lab):
    os.makedirs(lab.host.extensions_dir)
    open(os.path.join(lab.host.extensions_dir, "k0s.raw"), "w").close()
    os.makedirs(lab.host.unit_dir)
    open(os.path.join(lab.host.unit_dir, "k0scontroller.service"), "w").close()
    os.unlink(str(lab.tools / "systemd-sysext"))
    plan = ks.query(lab.host, lab.upload("one")[1], "k0scontroller", merged_check=False)
    assert len(plan["problems"]) == 3 and plan["wanted"] is None and not plan["transfer"]


def test_status_json_of_systemd_252():
    # Captured from the molecule scenario's host (Debian bookworm, systemd 252) with the image merged.
    text = ('[{"hierarchy":"/opt","extensions":"none","since":null},'
            '{"hierarchy":"/usr","extensions":["k0s"],"since":1795760255215294}]')
    assert ks.parse_status_json(text) == {"/opt": [], "/usr": ["k0s"]}
    assert ks.parse_status_json('[{"hierarchy":"/usr","extensions":"none","since":null}]') == {"/usr": []}


def test_status_table_of_systemd_252():
    # `systemd-sysext status --no-legend` as systemd 252 prints it (one extension per line of a hierarchy).
    text = ("/opt none -\n"
            "/usr k0s   Fri 2026-11-27 06:10:01 UTC\n"
            "     other\n")
    assert ks.parse_status_table(text) == {"/opt": [], "/usr": ["k0s", "other"]}
