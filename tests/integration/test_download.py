"""roles/split for real: release download + sha256sums.txt verification against a local HTTP server.

The server is Python's http.server on 127.0.0.1 serving a temporary directory laid out like a k0s
release (<version>/k0s-<version>-<goarch>, <version>/sha256sums.txt); ansible-playbook runs the role
against an inventory of three local hosts, so the run_once fact propagation is checked on the way.
Nothing here contacts the internet.
"""
import functools
import hashlib
import http.server
import json
import platform
import shutil
import sys
import threading
from pathlib import Path

import pytest

from testlib import FIXTURES, ansible_env, recap, run_playbook, sha256
VERSION = "v1.36.3+k0s.0"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine())
HOSTS = ["node1", "node2", "node3"]


class Release:
    """A release tree served over HTTP on 127.0.0.1, recording every request path."""

    def __init__(self, root):
        self.root = root
        self.requests = []
        release = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):
                release.requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def release(tmp_path, fixture_index):
    if GOARCH is None:
        pytest.skip("no k0s release architecture for %s" % platform.machine())
    vdir = tmp_path / "srv" / VERSION
    vdir.mkdir(parents=True)
    asset = vdir / ("k0s-%s-%s" % (VERSION, GOARCH))
    shutil.copy2(FIXTURES / "k0s-small-zip", asset)
    rel = Release(tmp_path / "srv")
    rel.asset = asset
    rel.sha256 = sha256(asset)
    yield rel
    rel.close()


def write_sums(release, lines):
    (release.root / VERSION / "sha256sums.txt").write_text("".join(l + "\n" for l in lines))


PLAYBOOK = """
- hosts: all
  gather_facts: true
  gather_subset: ['!all']
  roles:
    - role: fleetsplit.k0s.split
  tasks:
    # files[].changed / stripped_executable.changed say whether this run wrote the file: drop them
    # so re-runs compare equal (keys sorted: a reused cache manifest lists them in another order).
    - name: Record what every host sees
      vars:
        _files: "{{ k0s_split.files | map('dict2items') | map('rejectattr', 'key', 'equalto', 'changed') | map('items2dict') | list }}"
        _exe: "{{ k0s_split.stripped_executable | dict2items | rejectattr('key', 'equalto', 'changed') | items2dict }}"
      ansible.builtin.copy:
        content: >-
          {{ {'k0s_split': k0s_split | combine({'files': _files, 'stripped_executable': _exe}),
              'source': k0s_split_source, 'dir': k0s_split_dir} | to_json(sort_keys=true) }}
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
"""


def run_split(tmp_path, release, **extra):
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    inv = "[k0s_workers]\n%s\n[all:vars]\nansible_connection=local\nansible_python_interpreter=%s\n" % (
        "\n".join(HOSTS), sys.executable)
    (tmp_path / "hosts.ini").write_text(inv)
    evars = dict(k0s_version=VERSION, k0s_download_base_url=release.base_url,
                 k0s_controller_cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"),
                 k0s_download_insecure=True)     # the local server speaks http
    evars.update(extra)
    env = ansible_env(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        env.pop(var, None)
    return run_playbook(["-i", tmp_path / "hosts.ini", tmp_path / "play.yml", "-e", json.dumps(evars)],
                        cwd=tmp_path, env=env, timeout=300)


def test_good_checksum_downloads_splits_and_reaches_every_host(tmp_path, release, fixture_index):
    asset_name = release.asset.name
    write_sums(release, [
        "%s  k0s-%s-arm64" % ("0" * 64, VERSION),   # other assets are listed too
        "%s  %s" % (release.sha256, asset_name),
    ])
    proc, out = run_split(tmp_path, release)
    assert proc.returncode == 0, out

    cached = tmp_path / "cache" / "downloads" / VERSION / asset_name
    assert sha256(cached) == release.sha256
    assert (tmp_path / "cache" / "downloads" / VERSION / "sha256sums.txt").exists()
    # Exactly one request each (the client may or may not percent-encode the "+").
    assert sorted(p.replace("%2B", "+") for p in release.requests) == sorted(
        ["/%s/%s" % (VERSION, asset_name), "/%s/sha256sums.txt" % VERSION])

    # run_once: the fact set on the first host is on every host, identical.
    seen = {h: json.loads((tmp_path / "out" / ("%s.json" % h)).read_text()) for h in HOSTS}
    assert len({json.dumps(v, sort_keys=True) for v in seen.values()}) == 1
    fact = seen[HOSTS[0]]
    split = fact["k0s_split"]
    assert fact["source"] == str(cached)
    assert fact["dir"] == str(tmp_path / "cache" / "split" / release.sha256)

    expected = fixture_index["k0s-small-zip"]
    assert split["format"] == "zip"
    assert sorted(f["name"] for f in split["files"]) == sorted(expected["binaries"])
    for f in split["files"]:
        on_disk = Path(fact["dir"]) / "libexec" / f["name"]
        assert f["sha256"] == expected["binaries"][f["name"]]["sha256"]
        assert sha256(on_disk) == f["sha256"]
        assert (Path(fact["dir"]) / "streams" / "libexec" / (f["name"] + ".gz")).is_file()
    stripped = Path(fact["dir"]) / "bin" / "k0s"
    assert sha256(stripped) == sha256(FIXTURES / "k0s-small-zip.bare") == split["stripped_executable"]["sha256"]

    # Second run: verified cache, no network, nothing changed anywhere.
    release.requests.clear()
    proc, out = run_split(tmp_path, release)
    assert proc.returncode == 0, out
    assert release.requests == []
    assert all(r["changed"] == 0 for r in recap(out).values()), out


def test_wrong_checksum_fails_and_caches_nothing(tmp_path, release):
    asset_name = release.asset.name
    wrong = hashlib.sha256(b"not the asset").hexdigest()
    write_sums(release, ["%s  %s" % (wrong, asset_name)])
    proc, out = run_split(tmp_path, release)
    assert proc.returncode != 0
    assert "did not match" in out or "checksum" in out.lower(), out
    assert any(asset_name in p.replace("%2B", "+") for p in release.requests), "the asset was never fetched"
    dl = tmp_path / "cache" / "downloads" / VERSION
    assert not (dl / asset_name).exists()
    assert not (dl / "sha256sums.txt").exists()
    assert not (tmp_path / "cache" / "split").exists()

    # Fixing the sums file upstream makes the next run succeed (nothing bad was remembered).
    write_sums(release, ["%s  %s" % (release.sha256, asset_name)])
    proc, out = run_split(tmp_path, release)
    assert proc.returncode == 0, out
    assert sha256(dl / asset_name) == release.sha256


def test_asset_missing_from_sums_is_a_clear_error(tmp_path, release):
    write_sums(release, ["%s  k0s-%s-arm64" % (release.sha256, VERSION)])
    proc, out = run_split(tmp_path, release)
    assert proc.returncode != 0
    assert "%s is not listed in %s/%s/sha256sums.txt" % (release.asset.name, release.base_url, VERSION) in out, out
    assert not any(release.asset.name in p.replace("%2B", "+") for p in release.requests)
    assert not (tmp_path / "cache" / "downloads" / VERSION / release.asset.name).exists()


def test_neither_executable_nor_version_fails_at_once_naming_both(tmp_path, release):
    # No test fixture is ever a role default: with nothing given the role stops before any work.
    proc, out = run_split(tmp_path, release, k0s_version="")
    assert proc.returncode != 0
    assert "k0s_executable" in out and "k0s_version" in out, out
    assert "Require a k0s executable or a release version" in out, out
    assert not (tmp_path / "cache").exists()
    assert release.requests == []


def test_http_base_is_refused_without_the_insecure_flag(tmp_path, release):
    write_sums(release, ["%s  %s" % (release.sha256, release.asset.name)])
    proc, out = run_split(tmp_path, release, k0s_download_insecure=False)
    assert proc.returncode != 0
    assert "is not an https:// URL" in out and release.base_url in out, out
    assert "k0s_download_insecure=true" in out, out
    assert release.requests == [] and not (tmp_path / "cache").exists()
    # With the flag it downloads, and says once that it is insecure.
    proc, out = run_split(tmp_path, release)
    assert proc.returncode == 0, out
    assert out.count("WARNING: k0s_download_insecure is true") == 1, out
    assert sha256(tmp_path / "cache" / "downloads" / VERSION / release.asset.name) == release.sha256


@pytest.mark.parametrize("version", ["v1.36.3", "1.36.3+k0s.0", "v1.36.3+k0s.0/../../x", "v1.36.3+k0s.0\nx",
                                     "v1.36+k0s.0", "v01.36.3+k0s.0", "v1.30.0-rc1+k0s.0", "v1.36.3+k0s.0\n"])
def test_bad_k0s_version_is_refused_before_anything_is_written(tmp_path, release, version):
    proc, out = run_split(tmp_path, release, k0s_version=version)
    assert proc.returncode != 0
    assert "is not a k0s release tag" in out and "v1.30.0-rc.1+k0s.0" in out, out
    assert release.requests == [] and not (tmp_path / "cache").exists()


def test_release_candidate_tag_is_accepted(tmp_path, release):
    rc = "v1.30.0-rc.1+k0s.0"
    (release.root / rc).mkdir()
    asset = release.root / rc / ("k0s-%s-%s" % (rc, GOARCH))
    shutil.copy2(release.asset, asset)
    (release.root / rc / "sha256sums.txt").write_text("%s  %s\n" % (release.sha256, asset.name))
    proc, out = run_split(tmp_path, release, k0s_version=rc)
    assert proc.returncode == 0, out
    assert sha256(tmp_path / "cache" / "downloads" / rc / asset.name) == release.sha256
