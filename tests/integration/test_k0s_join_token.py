"""fleetsplit.k0s.k0s_join_token run for real: as a module process (writes, modes, idempotence, check mode,
overwrite, refusals, membership) and through ansible-playbook -vvv (the token never shows)."""
import json
import os
import stat
import subprocess
import sys

from testlib import COLLECTIONS, REPO, local_inventory, make_join_token, run_playbook

MODULE = REPO / "plugins" / "modules" / "k0s_join_token.py"
TOKEN = make_join_token(b"ca bytes", token="abcdef.0123456789secret")


def run(tmp_path, expect_fail=False, check=False, **args):
    argfile = tmp_path / "args.json"
    args.update(_ansible_check_mode=check)
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    p = subprocess.run([sys.executable, str(MODULE), str(argfile)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), check=False)
    argfile.unlink()
    res = json.loads(p.stdout)
    assert bool(res.get("failed")) == expect_fail, res
    assert "0123456789secret" not in p.stdout + p.stderr
    return res


def test_write_is_private_atomic_and_idempotent(tmp_path):
    path = tmp_path / "etc-k0s" / "k0stoken"
    r = run(tmp_path, check=True, path=str(path), token=TOKEN)
    assert r["changed"] and not path.parent.exists(), "check mode writes nothing"
    r = run(tmp_path, path=str(path), token=TOKEN)
    assert r["changed"] and path.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["k0stoken"], "no temporary file left"
    assert run(tmp_path, path=str(path), token=TOKEN)["changed"] is False
    path.chmod(0o644)
    assert run(tmp_path, path=str(path), token=TOKEN)["changed"] is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_overwrite_after_join(tmp_path):
    path = tmp_path / "k0stoken"
    assert run(tmp_path, path=str(path), state="overwritten")["changed"] is False, "nothing to overwrite"
    run(tmp_path, path=str(path), token=TOKEN)
    r = run(tmp_path, path=str(path), state="overwritten")
    assert r["changed"] and path.read_text().startswith("# overwritten by fleetsplit.k0s")
    assert run(tmp_path, path=str(path), state="overwritten")["changed"] is False


def test_refusals(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("x")
    os.symlink(target, tmp_path / "link")
    r = run(tmp_path, expect_fail=True, path=str(tmp_path / "link"), token=TOKEN)
    assert "not a regular file" in r["msg"] and target.read_text() == "x"
    r = run(tmp_path, expect_fail=True, path=str(tmp_path / "a" / ".." / "b"), token=TOKEN)
    assert "normalised absolute path" in r["msg"]
    r = run(tmp_path, expect_fail=True, path=str(tmp_path / "t"), token="two\nlines")
    assert "one non-empty line" in r["msg"]
    r = run(tmp_path, expect_fail=True, path=str(tmp_path / "t"))
    assert "token" in r["msg"]
    wide = tmp_path / "wide"
    wide.mkdir()
    wide.chmod(0o777)
    r = run(tmp_path, expect_fail=True, path=str(wide / "k0stoken"), token=TOKEN)
    assert "world-writable" in r["msg"] and not (wide / "k0stoken").exists()


def test_query_reports_membership(tmp_path):
    (tmp_path / "kubelet.conf").write_text("x")
    r = run(tmp_path, state="query", data_dir=str(tmp_path))
    assert r["changed"] is False and r["k0s_cluster"]["kubelet_conf"] is True


def test_token_never_shows_at_vvv(tmp_path):
    """Through ansible-playbook with -vvv: the module's no_log option keeps the token out of the output."""
    play = tmp_path / "play.yml"
    play.write_text("""
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.k0s_join_token:
        path: "{{ dest }}"
        token: "{{ lookup('ansible.builtin.file', src) }}"
      register: written
    - ansible.builtin.debug:
        var: written
""")
    src = tmp_path / "token"
    src.write_text(TOKEN)
    proc, out = run_playbook(local_inventory() + ["-vvv", play, "-e", "dest=%s" % (tmp_path / "out" / "k0stoken"),
                                                  "-e", "src=%s" % src])
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "out" / "k0stoken").read_text() == TOKEN + "\n"
    assert "ESTABLISH LOCAL CONNECTION" in out, "-vvv took effect"
    assert TOKEN not in out and "0123456789secret" not in out
