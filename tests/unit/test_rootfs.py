"""plugins/module_utils/k0s_rootfs.py on real temporary trees: paths resolved inside an image root as
openat2(RESOLVE_IN_ROOT) resolves them, and refused when a plain open() on this machine would leave the root.

Where the kernel offers openat2 (Linux 5.6+), the in-root resolution is compared with the kernel's own."""
import ctypes
import errno
import os

import pytest

from testlib import tree_snapshot
from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_rootfs as rf


def link(target, path):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    os.symlink(str(target), str(path))


@pytest.fixture
def tree(tmp_path):
    """work/{root,outside}: root holds a merged-/usr layout plus whatever a test adds."""
    root = tmp_path / "work" / "root"
    (tmp_path / "work" / "outside").mkdir(parents=True)
    for d in ("usr/bin", "usr/lib/systemd", "run", "etc", "var/lib"):
        (root / d).mkdir(parents=True)
    link("usr/bin", root / "bin")
    link("usr/lib", root / "lib")
    link("../run", root / "var/run")
    return root


def refused(root, path, kind="file"):
    with pytest.raises(rf.RootfsError) as e:
        rf.check_write_path(str(root), path, kind)
    return str(e.value)


# --------------------------------------------------------------------------- escapes

def test_absolute_etc_link_to_the_build_machines_etc_is_refused(tree):
    os.rmdir(str(tree / "etc"))
    link("/etc", tree / "etc")
    msg = refused(tree, "/etc/systemd/system/k0scontroller.service")
    assert "refusing to write /etc/systemd/system/k0scontroller.service" in msg
    assert "/etc -> /etc is an absolute symlink" in msg and "outside the overlay root %s" % tree in msg
    # Inside the image the link points at itself (the kernel says ELOOP there too).
    with pytest.raises(rf.RootfsError, match="too many levels of symbolic links"):
        rf.resolve_in_root(str(tree), "/etc/systemd/system")


def test_var_lib_to_an_outside_directory_is_refused(tree):
    outside = tree.parent / "outside"
    os.rmdir(str(tree / "var/lib"))
    link(outside, tree / "var/lib")
    msg = refused(tree, "/var/lib/k0s/bin", "dir")
    assert "/var/lib -> %s is an absolute symlink" % outside in msg
    assert "on this machine it leads to %s" % outside in msg
    assert "(inside the image it is %s/k0s/bin)" % outside in msg


def test_relative_link_climbing_above_the_root_is_refused(tree):
    link("../../..", tree / "etc/systemd")
    msg = refused(tree, "/etc/systemd/system/k0sworker.service")
    assert "/etc/systemd -> ../../.. climbs above the overlay root" in msg
    assert "on this machine it leads to %s," % tree.parent.parent in msg
    # RESOLVE_IN_ROOT: '..' at the root stays at the root.
    assert rf.resolve_in_root(str(tree), "/etc/systemd/system")[0] == str(tree / "system")


def test_escape_through_a_nested_link_names_the_link_that_leads_out(tree):
    link("../lib/systemd", tree / "etc/systemd")                 # fine: stays inside
    link("../../../..", tree / "usr/lib/systemd/system")         # climbs out from inside the first one
    msg = refused(tree, "/etc/systemd/system/x.service")
    assert "/usr/lib/systemd/system -> ../../../.. climbs above the overlay root" in msg


def test_the_final_component_of_a_directory_is_followed_and_checked(tree):
    link(tree.parent / "outside", tree / "usr/share")
    assert "/usr/share -> " in refused(tree, "/usr/share", "dir")


# --------------------------------------------------------------------------- what passes

def test_relative_links_inside_the_root_pass_and_resolve(tree):
    assert rf.check_write_path(str(tree), "/bin/k0s") == {
        "path": "/bin/k0s", "kind": "file", "host_path": str(tree / "usr/bin/k0s"), "exists": False}
    res = rf.check_write_path(str(tree), "/var/run/k0s/bin", "dir")
    assert res["host_path"] == str(tree / "run/k0s/bin") and not res["exists"]
    assert rf.check_write_path(str(tree), "/lib/systemd", "dir")["host_path"] == str(tree / "usr/lib/systemd")
    # A link the play makes is not followed: its own path is where it goes.
    assert rf.check_write_path(str(tree), "/bin", "link")["host_path"] == str(tree / "bin")


def test_a_fresh_root_that_does_not_exist_yet(tmp_path):
    root = rf.check_root(str(tmp_path / "new" / "overlay"))
    res = rf.check_write_path(root, "/usr/libexec/k0s", "dir")
    assert res == {"path": "/usr/libexec/k0s", "kind": "dir", "host_path": root + "/usr/libexec/k0s", "exists": False}
    assert not (tmp_path / "new").exists()


def test_checks_write_nothing(tree):
    link("/etc", tree / "etc/systemd")
    before = tree_snapshot(tree.parent)
    for path, kind in (("/etc/systemd/system/a", "file"), ("/var/run/k0s", "dir"), ("/bin/k0s", "file")):
        try:
            rf.check_write_path(str(tree), path, kind)
        except rf.RootfsError:
            pass
    assert tree_snapshot(tree.parent) == before


# --------------------------------------------------------------------------- loops, dangling links, types

def test_symlink_loop_is_refused_like_eloop(tree):
    link("b", tree / "etc/a")
    link("a", tree / "etc/b")
    msg = refused(tree, "/etc/a/x")
    assert "too many levels of symbolic links (more than 40, a loop?) at /etc/" in msg
    link("self", tree / "etc/self")
    assert "too many levels" in refused(tree, "/etc/self", "dir")


def test_dangling_link_on_the_way_is_refused(tree):
    link("../srv/data", tree / "var/lib/k0s")
    msg = refused(tree, "/var/lib/k0s/bin", "dir")
    assert "/var/lib/k0s -> ../srv/data is a dangling symlink (/var/srv does not exist)" in msg
    # In the image it simply names a directory that does not exist yet.
    assert rf.resolve_in_root(str(tree), "/var/lib/k0s/bin") == (str(tree / "var/srv/data/bin"), None)


def test_final_component_of_the_wrong_type_is_refused(tree):
    (tree / "usr/bin/k0s").write_text("x")
    link("k0s", tree / "usr/bin/k0s-link")
    (tree / "etc/runlevels/default/k0sworker").mkdir(parents=True)
    assert "is a symlink to k0s" in refused(tree, "/usr/bin/k0s-link")
    assert "exists and is not a regular file" in refused(tree, "/etc/runlevels")
    assert "exists and is not a symlink" in refused(tree, "/etc/runlevels/default/k0sworker", "link")
    assert "exists and is not a directory" in refused(tree, "/usr/bin/k0s", "dir")
    assert "/usr/bin/k0s is not a directory" in refused(tree, "/usr/bin/k0s/x")
    assert rf.check_write_path(str(tree), "/usr/bin/k0s")["exists"] is True


# --------------------------------------------------------------------------- values and the root

@pytest.mark.parametrize("value,says", [
    ("/../x", "must not contain '.' or '..' components"),
    ("/usr/libexec/../../etc", "must not contain '.' or '..' components"),
    ("/usr/./libexec", "must not contain '.' or '..' components"),
    ("usr/libexec/k0s", "must be an absolute path"),
    ("/usr//libexec", "must be a normalised path"),
    ("/usr/libexec/", "must be a normalised path"),
    ("//usr/libexec", "must be a normalised path"),
    ("/usr/libexec\n[Service]", "contains the control character \\n"),
    ("/usr/lib\x7fexec", "contains the control character"),
    ("/usr/lib\x85exec", "contains the control character"),
    ("", "must be a non-empty absolute path"),
])
def test_path_values_are_refused_with_the_variable_named(value, says):
    with pytest.raises(rf.RootfsError) as e:
        rf.check_path_value("k0s_libexec_dir", value)
    assert str(e.value).startswith("k0s_libexec_dir") and says in str(e.value)


def test_root_slash_or_a_chain_resolving_to_it_is_refused(tmp_path):
    link("/", tmp_path / "one")
    link(tmp_path / "one", tmp_path / "two")
    for root in ("/", "//", "/.", str(tmp_path / "two"), str(tmp_path) + "/../../../../../.."):
        with pytest.raises(rf.RootfsError) as e:
            rf.check_root(root)
        assert "resolves to / (the build machine itself)" in str(e.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(rf.RootfsError, match="is not a directory"):
        rf.check_root(str(tmp_path / "file"))
    with pytest.raises(rf.RootfsError, match="not an absolute path"):
        rf.check_root("out/overlay")
    link("real", tmp_path / "root-link")
    (tmp_path / "real").mkdir()
    assert rf.check_root(str(tmp_path / "root-link")) == str(tmp_path / "real")


def test_every_problem_is_named_in_one_refusal(tree):
    link("/etc", tree / "etc/systemd")
    paths = [{"path": "/etc/systemd/system/k0scontroller.service", "kind": "file", "origin": "fleetsplit.k0s.service"},
             {"path": "/usr/libexec/k0s", "kind": "dir", "origin": "k0s_libexec_dir"},
             {"path": "/usr/libexec/k0s", "names": ["runc", "../../etc/passwd"], "origin": "k0s_libexec_dir"}]
    with pytest.raises(rf.RootfsError) as e:
        rf.check_write_paths(str(tree), paths, {"k0s_data_dir": "/var/lib/k0s\n", "k0s_bin_dir": "/usr/bin"})
    msg = str(e.value)
    assert msg.startswith("3 problems:")
    assert "k0s_data_dir contains the control character \\n" in msg
    assert "'../../etc/passwd' is not a plain file name (below /usr/libexec/k0s)" in msg
    assert "(fleetsplit.k0s.service) refusing to write /etc/systemd/system/k0scontroller.service" in msg


def test_names_expand_below_their_directory(tree):
    root, checked = rf.check_write_paths(str(tree), [{"path": "/var/run/k0s/bin", "names": ["runc", "kubelet"],
                                                      "kind": "link", "origin": "k0s_data_dir"}])
    assert root == str(tree)
    assert [(c["path"], c["host_path"], c["kind"]) for c in checked] == [
        ("/var/run/k0s/bin/runc", str(tree / "run/k0s/bin/runc"), "link"),
        ("/var/run/k0s/bin/kubelet", str(tree / "run/k0s/bin/kubelet"), "link")]


# --------------------------------------------------------------------------- against the kernel

RESOLVE_IN_ROOT = 0x10
SYS_OPENAT2 = 437        # the same number on every architecture (the generic syscall table)


def kernel_in_root(root, path):
    """openat2(root fd, path, O_PATH, RESOLVE_IN_ROOT): the real path the kernel lands on, or an errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    how = (ctypes.c_uint64 * 3)(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT)
    dfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = libc.syscall(SYS_OPENAT2, dfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            return ctypes.get_errno()
        try:
            return os.readlink("/proc/self/fd/%d" % fd)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def test_in_root_resolution_agrees_with_the_kernels_openat2(tree):
    if kernel_in_root(str(tree), "/usr") in (errno.ENOSYS, errno.EPERM):
        pytest.skip("no openat2 here")
    link("/usr/lib/systemd", tree / "etc/systemd")     # absolute: restarts at the root
    link("../../..", tree / "usr/lib/up")               # '..' stops at the root
    link("../../bin/../lib/./systemd", tree / "usr/bin/sd")
    link("/var/run/../lib", tree / "etc/varlib")
    link("x", tree / "etc/loop-y")
    link("loop-y", tree / "etc/x")
    cases = ["/etc/systemd", "/usr/lib/up", "/usr/lib/up/usr/lib/up/etc", "/usr/bin/sd", "/bin/sd", "/etc/varlib",
             "/var/run", "/lib/systemd", "/bin"]
    for path in cases:
        ours = rf.resolve_in_root(str(tree), path)[0]
        assert kernel_in_root(str(tree), path) == ours, path
    assert kernel_in_root(str(tree), "/etc/x") == errno.ELOOP
    with pytest.raises(rf.RootfsError, match="too many levels"):
        rf.resolve_in_root(str(tree), "/etc/x")
