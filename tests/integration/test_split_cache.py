"""The controller cache of roles/split as an attacker or a careless operator meets it, through real playbooks.

Each test runs ansible-playbook with roles/split (k0s_executable = a fixture, k0s_controller_cache_dir = a temp
dir) and, where it matters, roles/install against a host relocated under tmp_path: what a host installs must
come from the executable the user named, whatever the cache holds.
"""
import gzip
import json
import os
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from testlib import FIXTURES, ansible_env, load_fixtures, recap, run_playbook, sha256

SPLIT_ONLY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: fleetsplit.k0s.split
  tasks:
    - ansible.builtin.copy:
        content: "{{ {'k0s_split': k0s_split, 'dir': k0s_split_dir} | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""

SPLIT_AND_INSTALL = SPLIT_ONLY + """
    - ansible.builtin.include_role:
        name: fleetsplit.k0s.install
"""


def play(tmp_path, executable, body=SPLIT_ONLY, umask=None, **extra):
    """Run the play; returns (proc, output, recorded facts or None)."""
    (tmp_path / "play.yml").write_text(body)
    out = tmp_path / "facts.json"
    if out.exists():
        out.unlink()
    root = tmp_path / "host"
    evars = dict(k0s_executable=str(executable), k0s_controller_cache_dir=str(tmp_path / "cache"), out=str(out),
                 k0s_store_dir=str(root / "var/lib/fleetsplit-k0s"), k0s_bin_dir=str(root / "usr/bin"),
                 k0s_libexec_dir=str(root / "usr/libexec/k0s"), k0s_data_dir=str(root / "var/lib/k0s"))
    evars.update(extra)
    args = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
            tmp_path / "play.yml", "-e", json.dumps(evars)]
    env = ansible_env()
    if umask is None:
        proc, output = run_playbook(args, cwd=tmp_path, env=env)
    else:
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook")] + [str(a) for a in args],
                              cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600,
                              check=False, preexec_fn=lambda: os.umask(umask))
        output = proc.stdout + proc.stderr
    return proc, output, (json.loads(out.read_text()) if out.exists() else None)


def squeeze(text):
    """Without whitespace: ansible-core wraps long warnings, 2.16 even inside paths."""
    return "".join(text.split())


def says(output, text, count=None):
    if count is None:
        return squeeze(text) in squeeze(output)
    return squeeze(output).count(squeeze(text)) == count


def entry(tmp_path, fixture):
    return tmp_path / "cache" / "split" / sha256(fixture)


def stable(facts):
    """The split facts without the per-run changed flags."""
    split = dict(facts["k0s_split"])
    split["files"] = [dict((k, v) for k, v in f.items() if k != "changed") for f in split["files"]]
    split["stripped_executable"] = dict((k, v) for k, v in split["stripped_executable"].items() if k != "changed")
    return split


def file_fact(facts, name):
    return [f for f in facts["k0s_split"]["files"] if f["name"] == name][0]


def test_forged_cache_entry_is_healed_and_installs_nothing_foreign(tmp_path):
    fixtures = load_fixtures()
    exe = Path(fixtures["k0s-small-zip"]["path"])
    true_runc = fixtures["k0s-small-zip"]["binaries"]["runc"]["sha256"]
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode == 0, out
    # The attacker replaces runc consistently: the file, its stream and the manifest row (every field).
    forged = (FIXTURES / "variants" / "v2" / "runc").read_bytes()
    assert sha256(FIXTURES / "variants" / "v2" / "runc") != true_runc
    d = entry(tmp_path, exe)
    (d / "libexec" / "runc").write_bytes(forged)
    stream = gzip.compress(forged, 6)
    (d / "streams" / "libexec" / "runc.gz").write_bytes(stream)
    manifest = json.loads((d / "streams" / "manifest.json").read_text())
    row = [f for f in manifest["files"] if f["name"] == "runc"][0]
    row.update(sha256=sha256(d / "libexec" / "runc"), size=len(forged), crc32=zlib.crc32(forged),
               stream_size=len(stream), stream_sha256=sha256(d / "streams" / "libexec" / "runc.gz"))
    (d / "streams" / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    proc, out, facts = play(tmp_path, exe, SPLIT_AND_INSTALL)
    assert proc.returncode == 0, out
    runc = file_fact(facts, "runc")
    assert runc["sha256"] == true_runc and sha256(d / "libexec" / "runc") == true_runc
    assert runc["stream_sha256"] == sha256(d / "streams" / "libexec" / "runc.gz")
    assert gzip.decompress((d / "streams" / "libexec" / "runc.gz").read_bytes()) == \
        (FIXTURES / "bins" / "runc").read_bytes()
    assert json.loads((d / "streams" / "manifest.json").read_text())["files"] == \
        [dict((k, v) for k, v in f.items() if k != "changed") for f in facts["k0s_split"]["files"]]
    # The host got the true runc; the play said once which cache files it rewrote.
    assert sha256(tmp_path / "host" / "usr/libexec/k0s/runc") == true_runc
    assert says(out, "existing outputs did not match %s" % exe, count=1), out
    assert says(out, "%s, %s were rewritten" % (d / "libexec" / "runc", d / "streams" / "libexec" / "runc.gz")), out


def test_same_size_corruption_heals_on_the_next_run(tmp_path):
    fixtures = load_fixtures()
    exe = Path(fixtures["k0s-small-legacy"]["path"])
    proc, out, first = play(tmp_path, exe)
    assert proc.returncode == 0, out
    d = entry(tmp_path, exe)
    victims = [d / "libexec" / "xtables-nft-multi", d / "streams" / "libexec" / "runc.gz", d / "bin" / "k0s", d / "streams" / "bin" / "k0s.gz"]
    for victim in victims:
        st = os.stat(victim)
        with open(victim, "r+b") as f:     # one byte flipped: same size, same mtime
            f.seek(st.st_size // 2)
            byte = f.read(1)
            f.seek(st.st_size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode == 0, out
    assert stable(facts) == stable(first)
    assert sha256(d / "libexec" / "xtables-nft-multi") == fixtures["k0s-small-legacy"]["binaries"]["xtables-nft-multi"]["sha256"]
    assert sha256(d / "bin" / "k0s") == sha256(FIXTURES / "k0s-small-legacy.bare")
    assert sha256(d / "streams" / "bin" / "k0s.gz") == facts["k0s_split"]["stripped_executable"]["stream_sha256"]
    assert all(says(out, str(v)) for v in victims), out
    # Legacy k0s needs the pinned mtime on the rewritten files too.
    assert os.stat(d / "libexec" / "xtables-nft-multi").st_mtime_ns == os.stat(exe).st_mtime_ns
    proc, out, again = play(tmp_path, exe)
    assert proc.returncode == 0 and "did not match" not in out and recap(out)["localhost"]["changed"] == 1, out


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_cache_writable_by_others_is_refused_naming_the_directory(tmp_path, mode):
    exe = Path(load_fixtures()["k0s-small-zip"]["path"])
    split_dir = tmp_path / "cache" / "split"
    split_dir.mkdir(parents=True)
    os.chmod(tmp_path / "cache", 0o700)
    os.chmod(split_dir, mode)
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode != 0 and facts is None
    assert says(out, "controller cache directory %s is group/world-writable (mode %04o)" % (split_dir, mode)), out
    assert says(out, "chmod 700 %s" % split_dir), out
    assert os.listdir(split_dir) == [] and stat.S_IMODE(os.stat(split_dir).st_mode) == mode


def test_readable_cache_is_tightened_once_with_a_warning(tmp_path):
    exe = Path(load_fixtures()["k0s-small-zip"]["path"])
    split_dir = tmp_path / "cache" / "split"
    split_dir.mkdir(parents=True)
    os.chmod(split_dir, 0o755)        # as earlier versions created it
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode == 0, out
    assert stat.S_IMODE(os.stat(split_dir).st_mode) == 0o700
    assert says(out, "controller cache directory %s was readable by other users; tightened to mode 0700" % split_dir), out
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode == 0 and "tightened" not in out, out


def test_symlinked_or_foreign_cache_is_refused(tmp_path):
    exe = Path(load_fixtures()["k0s-small-zip"]["path"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "cache").mkdir(mode=0o700)
    (tmp_path / "cache" / "split").symlink_to(elsewhere)
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode != 0
    assert says(out, "controller cache directory %s is a symlink" % (tmp_path / "cache" / "split")), out
    assert os.listdir(elsewhere) == []
    (tmp_path / "cache" / "split").unlink()
    (tmp_path / "cache" / "split").mkdir(mode=0o700)
    os.chown(tmp_path / "cache" / "split", 65534, 65534)
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode != 0
    assert says(out, "controller cache directory %s is owned by uid 65534, not by you" % (tmp_path / "cache" / "split")), out
    # The cache directory itself writable by others: split/ could be swapped.
    os.chown(tmp_path / "cache" / "split", os.geteuid(), os.getegid())
    os.chmod(tmp_path / "cache", 0o777)
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode != 0
    assert says(out, "controller cache directory %s (it holds %s) is writable by other users" % (
        tmp_path / "cache", tmp_path / "cache" / "split")), out


def test_umask_0_gives_the_intended_modes_and_a_second_run_works(tmp_path):
    exe = Path(load_fixtures()["k0s-small-zip"]["path"])
    for run in range(2):
        proc, out, facts = play(tmp_path, exe, umask=0)
        assert proc.returncode == 0, out
    d = Path(facts["dir"])
    modes = dict((str(p.relative_to(tmp_path)), stat.S_IMODE(os.stat(p).st_mode))
                 for p in [tmp_path / "cache", d.parent, d, d / "libexec", d / "bin", d / "streams",
                           d / "streams" / "libexec", d / "streams" / "bin"])
    want = dict((k, 0o755) for k in modes)
    want.update({"cache": 0o700, "cache/split": 0o700})
    assert modes == want
    assert stat.S_IMODE(os.stat(d / "streams" / "manifest.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(d / "libexec" / "runc").st_mode) == 0o755


def test_planted_manifest_temp_symlink_is_not_followed(tmp_path):
    exe = Path(load_fixtures()["k0s-small-zip"]["path"])
    d = entry(tmp_path, exe)
    (d / "streams").mkdir(parents=True)
    os.chmod(tmp_path / "cache", 0o700)
    os.chmod(tmp_path / "cache" / "split", 0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (d / "streams" / "manifest.json.tmp").symlink_to(victim)
    proc, out, facts = play(tmp_path, exe)
    assert proc.returncode == 0, out
    assert victim.read_text() == "precious\n"
    manifest = d / "streams" / "manifest.json"
    assert not manifest.is_symlink() and json.loads(manifest.read_text())["files"]
    assert not [n for n in os.listdir(d / "streams") if n.endswith(".tmp") and n != "manifest.json.tmp"]


def test_retention_keeps_the_most_recently_used(tmp_path):
    fixtures = load_fixtures()
    a, b, c = (Path(fixtures[n]["path"]) for n in ("k0s-small-zip", "k0s-small-legacy", "k0s-zip"))
    for exe in (a, b, a, c):        # a is used again after b: b is the least recently used
        proc, out, facts = play(tmp_path, exe, k0s_controller_cache_keep=2)
        assert proc.returncode == 0, out
    assert sorted(os.listdir(tmp_path / "cache" / "split")) == sorted([sha256(a), sha256(c)])
    # Keep 1: only the executable of this run stays; 0 keeps everything.
    proc, out, facts = play(tmp_path, b, k0s_controller_cache_keep=0)
    assert sorted(os.listdir(tmp_path / "cache" / "split")) == sorted([sha256(a), sha256(b), sha256(c)])
    proc, out, facts = play(tmp_path, b, k0s_controller_cache_keep=1)
    assert proc.returncode == 0, out
    assert os.listdir(tmp_path / "cache" / "split") == [sha256(b)]


RELEASE = """
- hosts: localhost
  gather_facts: false
  tasks:
    - fleetsplit.k0s.stream_bundle:
        split: "{{ k0s_split }}"
        names: "{{ k0s_split.files | map(attribute='name') | list + ['k0s'] }}"
        dest: "{{ bundles }}"
      register: bundle
      when: forged_bundle is not defined
    - fleetsplit.k0s.k0s_release:
        k0s_version: "{{ k0s_split.k0s_version }}"
        files: "{{ k0s_split.files }}"
        executable: "{{ k0s_split.stripped_executable }}"
        store_dir: "{{ root }}/var/lib/fleetsplit-k0s"
        streams_dir: "{{ root }}/var/lib/fleetsplit-k0s/incoming"
        bin_dir: "{{ root }}/usr/bin"
        libexec_dir: "{{ root }}/usr/libexec/k0s"
        data_dir: "{{ root }}/var/lib/k0s"
        bundle_src: "{{ forged_bundle.path | default(bundle.path) }}"
        bundle_members: "{{ forged_bundle.members | default(bundle.members) }}"
"""


def test_bundles_are_checked_against_the_split_facts_and_hosts_name_the_cache_file(tmp_path):
    fixtures = load_fixtures()
    split = kp_split(fixtures["k0s-small-zip"]["path"], tmp_path / "split")
    runc_gz = [f for f in split["files"] if f["name"] == "runc"][0]["stream"]
    (tmp_path / "play.yml").write_text(RELEASE)
    evars = dict(k0s_split=split, root=str(tmp_path / "host"), bundles=str(tmp_path / "split" / "bundles"))

    def run(**extra):
        (tmp_path / "ev.json").write_text(json.dumps(dict(evars, **extra)))
        return run_playbook(["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
                             tmp_path / "play.yml", "-e", "@%s" % (tmp_path / "ev.json")], cwd=tmp_path,
                            env=ansible_env())

    # The cache stream was replaced after the split: stream_bundle refuses it, naming the cache file.
    good = Path(runc_gz).read_bytes()
    Path(runc_gz).write_bytes(gzip.compress((FIXTURES / "variants" / "v2" / "runc").read_bytes()))
    proc, out = run()
    assert proc.returncode != 0
    assert says(out, "controller cache stream %s (runc) has sha256" % runc_gz), out
    assert not (tmp_path / "host").exists() and not (tmp_path / "split" / "bundles").exists()
    # A bundle that bypassed that check (e.g. swapped after it was made): the host refuses the content and
    # the error names the controller-side cache files it came from.
    from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import write_bundle  # noqa: E402
    streams = [(f["name"], f["stream"]) for f in split["files"]] + [("k0s", split["stripped_executable"]["stream"])]
    forged = write_bundle(streams, str(tmp_path / "forged"))
    proc, out = run(forged_bundle=forged)
    assert proc.returncode != 0 and says(out, "stream for runc is unusable"), out
    assert says(out, "runc came from the controller cache bundle %s, made from the controller cache stream %s" % (
        forged["path"], runc_gz)), out
    assert not (tmp_path / "host" / "usr/libexec/k0s/runc").exists()
    Path(runc_gz).write_bytes(good)
    proc, out = run()
    assert proc.returncode == 0, out
    assert sha256(tmp_path / "host" / "usr/libexec/k0s/runc") == fixtures["k0s-small-zip"]["binaries"]["runc"]["sha256"]


def kp_split(src, out):
    from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_payload import split  # noqa: E402
    return split(src, stripped_executable=str(out / "k0s.stripped"), streams_dest=str(out / "streams"))
