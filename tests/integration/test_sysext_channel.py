"""The sysupdate channel (image_sysupdate.py, module sysext_channel, playbooks/tasks/sysext_channel.yml; issue 14
item 3), run by real ansible-playbook on real sysext images built by mksquashfs.

systemd-sysupdate has no Debian 12 package, so the channel is consumed by a client written here that follows the
transfer file as sysupdate does (src/sysupdate: url-file source = <Path>/SHA256SUMS, MatchPattern with @v and
%a, newest by strverscmp_improved, sha256 checked, InstancesMax, CurrentSymlink), over a real HTTP server on
127.0.0.1.
"""
import configparser
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.request

import pytest

from testlib import REPO, recap, run_playbook, sha256, tree_snapshot

from ansible_collections.fleetsplit.k0s.plugins.module_utils import image_sysupdate as su

ARCH = {"x86_64": "x86-64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def squashfs(tmp_path, name, text):
    """A real (small) squashfs image with distinct content."""
    src = tmp_path / ("src-" + name)
    (src / "usr/share").mkdir(parents=True)
    (src / "usr/share/version").write_text(text)
    out = tmp_path / (name + ".raw")
    subprocess.run(["mksquashfs", str(src), str(out), "-noappend", "-all-root", "-quiet", "-no-progress"], check=True)
    return out


PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Channel
      fleetsplit.k0s.sysext_channel: "{{ args }}"
      register: out
    - name: Result
      ansible.builtin.debug:
        msg: "RESULT={{ out | to_json }}"
"""


def channel(tmp_path, check=False, **args):
    play = tmp_path / "channel.yml"
    play.write_text(PLAY)
    evars = tmp_path / "channel-vars.json"
    evars.write_text(json.dumps(dict(args=args)))
    cmd = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
           "-e", "@%s" % evars, str(play)] + (["--check", "--diff"] if check else [])
    proc, out = run_playbook(cmd, cwd=tmp_path)
    return proc, out


def result(out):
    line = [l for l in out.splitlines() if '"msg": "RESULT=' in l][-1]
    return json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"][len("RESULT="):])


class Client(object):
    """What systemd-sysupdate does with one transfer file (url-file -> regular-file), for a test on 127.0.0.1."""

    def __init__(self, conf_text, host_root, architecture=ARCH):
        conf = configparser.ConfigParser(interpolation=None)
        conf.optionxform = str
        conf.read_string(conf_text)
        self.conf, self.root, self.arch = conf, host_root, architecture
        assert conf["Transfer"]["Verify"] == "false"
        assert conf["Source"]["Type"] == "url-file" and conf["Target"]["Type"] == "regular-file"

    def spec(self, value):   # specifiers: %a the architecture, %% a literal %
        return value.replace("%%", "\0").replace("%a", self.arch).replace("\0", "%")

    def update(self):
        src, dst = self.conf["Source"], self.conf["Target"]
        url = self.spec(src["Path"])
        sums = urllib.request.urlopen(url + "SHA256SUMS", timeout=10).read().decode()
        best = su.newest(sums, "k0s", self.arch)
        version, filename, digest = best
        data = urllib.request.urlopen(url + filename, timeout=10).read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError("sha256 mismatch for %s" % filename)
        target = self.root / dst["Path"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        (target / filename).write_bytes(data)
        have = sorted((su.match(dst["MatchPattern"], f, self.arch), f) for f in os.listdir(str(target))
                      if su.match(dst["MatchPattern"], f, self.arch))
        have.sort(key=functools.cmp_to_key(lambda a, b: su.strverscmp_improved(a[0], b[0])))
        for dummy, old in have[:-int(dst["InstancesMax"])]:
            os.unlink(str(target / old))
        link = self.root / dst["CurrentSymlink"].lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(str(link)):
            link.unlink()
        link.symlink_to(os.path.join(dst["Path"], filename))
        return version, filename


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    (root / "k0s").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root / "k0s", "http://127.0.0.1:%d/k0s/" % httpd.server_address[1]
    httpd.shutdown()


def test_versions_order_as_systemd_documents_it():
    # The order in the comment of systemd's strverscmp_improved(), then k0s versions.
    for ordered in (["122.1", "123~rc1-1", "123", "123-a", "123-a.1", "123-1", "123-1.1", "123^post1", "123.a-1",
                     "123.1-1", "123a-1", "124-1"],
                    ["v1.35.9+k0s.0", "v1.36.3-rc.1+k0s.0", "v1.36.3+k0s.0", "v1.36.3+k0s.1", "v1.36.10+k0s.0"]):
        for i, a in enumerate(ordered):
            for j, b in enumerate(ordered):
                assert su.strverscmp_improved(a, b) == (i > j) - (i < j), (a, b)


def test_k0s_versions_are_valid_sysupdate_versions_and_read_back():
    for version in ("v1.36.3+k0s.0", "v1.36.3-rc.1+k0s.0", "v1.30.14+k0s.0"):
        name = su.image_filename("k0s", version, "x86-64")
        assert name == "k0s-%s-x86-64.raw" % version
        assert su.match("k0s-@v-%a.raw", name, "x86-64") == version
        assert su.match("k0s-@v-%a.raw", name, "arm64") is None
    for bad in ("v1.36.3 k0s", "v1.36/3", "", "v1~3"):
        with pytest.raises(su.ChannelError, match="not a valid sysupdate version"):
            su.image_filename("k0s", bad, "x86-64")


def test_channel_served_over_http_updates_a_host_to_the_newest_version(tmp_path, server):
    chan, url = server
    (chan / "notes.txt").write_text("not an image")
    (chan / "other-v9.0-x86-64.raw").write_text("another extension")
    images = {v: squashfs(tmp_path, "img-" + v.replace("+", "_"), v)
              for v in ("v1.36.3+k0s.0", "v1.36.10+k0s.0", "v1.36.4-rc.1+k0s.0")}
    for version in ("v1.36.3+k0s.0", "v1.36.4-rc.1+k0s.0"):
        proc, out = channel(tmp_path, dir=str(chan), url=url, image=str(images[version]), version=version,
                            architecture=ARCH)
        assert proc.returncode == 0, out
    first_sums = (chan / "SHA256SUMS").read_text()
    client_root = tmp_path / "host"
    client = Client((chan / "k0s.conf").read_text(), client_root)
    assert client.update() == ("v1.36.4-rc.1+k0s.0", "k0s-v1.36.4-rc.1+k0s.0-%s.raw" % ARCH)

    # check mode: reports the copy and the new sums, writes nothing
    before = tree_snapshot(chan)
    proc, out = check = channel(tmp_path, check=True, dir=str(chan), url=url, image=str(images["v1.36.10+k0s.0"]),
                                version="v1.36.10+k0s.0", architecture=ARCH)
    assert proc.returncode == 0, out
    res = result(out)
    assert res["changed"] and res["written"] == ["k0s-v1.36.10+k0s.0-%s.raw" % ARCH, "SHA256SUMS"]
    assert tree_snapshot(chan) == before
    assert "k0s-v1.36.10+k0s.0-%s.raw" % ARCH in out   # the diff shows the new SHA256SUMS line

    proc, out = channel(tmp_path, dir=str(chan), url=url, image=str(images["v1.36.10+k0s.0"]),
                        version="v1.36.10+k0s.0", architecture=ARCH)
    assert proc.returncode == 0, out
    sums = (chan / "SHA256SUMS").read_text()
    assert sums == "".join("%s  %s\n" % (sha256(chan / f), f) for f in sorted(
        "k0s-%s-%s.raw" % (v, ARCH) for v in images))
    assert sums != first_sums and "other-" not in sums and "notes" not in sums
    assert client.update() == ("v1.36.10+k0s.0", "k0s-v1.36.10+k0s.0-%s.raw" % ARCH)
    target = client_root / "var/lib/extensions.d"
    assert os.readlink(str(client_root / "etc/extensions/k0s.raw")) == \
        "/var/lib/extensions.d/k0s-v1.36.10+k0s.0-%s.raw" % ARCH
    assert (target / ("k0s-v1.36.10+k0s.0-%s.raw" % ARCH)).read_bytes() == images["v1.36.10+k0s.0"].read_bytes()

    # Re-run: nothing to do.
    proc, out = channel(tmp_path, dir=str(chan), url=url, image=str(images["v1.36.10+k0s.0"]),
                        version="v1.36.10+k0s.0", architecture=ARCH)
    assert proc.returncode == 0 and recap(out)["localhost"]["changed"] == 0, out

    # A damaged image on the server is caught by the sha256 of SHA256SUMS.
    newest = chan / ("k0s-v1.36.10+k0s.0-%s.raw" % ARCH)
    data = bytearray(newest.read_bytes())
    data[100] ^= 0xff
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        client.update()


def test_transfer_file(tmp_path):
    text = su.transfer("k0s", "https://images.example.com/k0s%20ext", "/opt/extensions/k0s", 4)
    conf = configparser.ConfigParser(interpolation=None)
    conf.optionxform = str
    conf.read_string(text)
    assert dict(conf["Transfer"]) == {"Verify": "false"}
    assert dict(conf["Source"]) == {"Type": "url-file", "Path": "https://images.example.com/k0s%%20ext/",
                                    "MatchPattern": "k0s-@v-%a.raw"}
    assert dict(conf["Target"]) == {"Type": "regular-file", "Path": "/opt/extensions/k0s",
                                    "MatchPattern": "k0s-@v-%a.raw", "InstancesMax": "4",
                                    "CurrentSymlink": "/etc/extensions/k0s.raw"}


@pytest.mark.parametrize("args,message", [
    (dict(url="ftp://example.com/k0s/"), "is not an http:// or https:// URL"),
    (dict(url="http://example.com/k0s\n[Source]"), "is not an http:// or https:// URL"),
    (dict(url="http://exa mple.com/"), "is not an http:// or https:// URL"),
    (dict(version="v1.36.3 k0s"), "not a valid sysupdate version"),
    (dict(name="k0s/x"), "name='k0s/x'"),
    (dict(instances_max=1), "k0s_sysext_instances_max must be an integer >= 2"),
    (dict(target_dir="var/lib/extensions.d"), "k0s_sysext_target_dir='var/lib/extensions.d'"),
    (dict(architecture="EM_MIPS"), "EM_MIPS"),
], ids=["ftp", "newline", "space", "version", "name", "instances", "target", "arch"])
def test_refusals_write_nothing(tmp_path, args, message):
    chan = tmp_path / "chan"
    chan.mkdir()
    image = squashfs(tmp_path, "img", "x")
    full = dict(dir=str(chan), url="http://127.0.0.1/k0s/", image=str(image), version="v1.36.3+k0s.0",
                architecture=ARCH)
    full.update(args)
    proc, out = channel(tmp_path, **full)
    assert proc.returncode != 0 and message in out, out
    assert os.listdir(str(chan)) == []


TASKS = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: The channel tasks as overlay.yml includes them after a sysext build
      ansible.builtin.include_tasks: {tasks}
"""


def test_playbook_tasks_publish_the_built_image(tmp_path):
    chan = tmp_path / "chan"
    chan.mkdir()
    image = squashfs(tmp_path, "k0s", "v1.36.3")
    play = tmp_path / "tasks.yml"
    play.write_text(TASKS.format(tasks=REPO / "playbooks/tasks/sysext_channel.yml"))
    evars = dict(k0s_overlay_output=str(image), k0s_sysext_channel_dir=str(chan),
                 k0s_sysext_channel_url="https://example.com/k0s", k0s_sysext_instances_max=5,
                 _ov_split={"k0s_version": "v1.36.3+k0s.0", "elf_machine": "x86_64"})
    proc, out = run_playbook(["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
                              "-e", json.dumps(evars), str(play)], cwd=tmp_path)
    assert proc.returncode == 0, out
    assert sorted(os.listdir(str(chan))) == ["SHA256SUMS", "k0s-v1.36.3+k0s.0-x86-64.raw", "k0s.conf"]
    assert "InstancesMax=5\n" in (chan / "k0s.conf").read_text()
    assert "Path=https://example.com/k0s/\n" in (chan / "k0s.conf").read_text()
    evars.pop("k0s_sysext_channel_url")
    proc, out = run_playbook(["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
                              "-e", json.dumps(evars), str(play)], cwd=tmp_path)
    assert proc.returncode != 0 and "k0s_sysext_channel_url" in out, out
