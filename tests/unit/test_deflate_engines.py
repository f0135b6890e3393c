"""The controller's deflate engine (issue 19, payload/engines.py): the fastest installed (isal, zlib-ng, then zlib),
overridable by FLEETSPLIT_DEFLATE_ENGINE, identical results whatever the engine, reported in the results and by
`k0s-payload -v`, and a split that works when neither fast engine can be imported (a real interpreter in which the
imports of isal and zlib_ng fail). Real fixture executables, real files."""
import gzip
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.fleetsplit.k0s.plugins.module_utils import k0s_payload as kp
from ansible_collections.fleetsplit.k0s.plugins.module_utils.payload import engines, fsio, streams
from testlib import REPO

CLI = str(REPO / "scripts" / "k0s-payload")
PLUGINS = str(REPO / "plugins")


def _installed():
    return [name for name in engines.ORDER if isinstance(engines.get(name, strict=False), engines.Engine)]


def test_auto_picks_the_fastest_installed_and_the_variable_overrides_it(monkeypatch):
    monkeypatch.delenv(engines.ENV, raising=False)
    assert engines.available() == _installed() and engines.available()[-1] == "zlib"
    assert engines.select().name == _installed()[0]
    monkeypatch.setenv(engines.ENV, "auto")
    assert engines.select().name == _installed()[0]
    for name in _installed():
        monkeypatch.setenv(engines.ENV, name.upper())
        assert engines.select().name == name
        assert engines.select("zlib").name == "zlib"      # an explicit argument wins over the variable
    monkeypatch.setenv(engines.ENV, "gzip")
    with pytest.raises(kp.PayloadError, match="unknown deflate engine 'gzip' .*FLEETSPLIT_DEFLATE_ENGINE.*use auto, isal"):
        engines.select()


def test_every_engine_gives_the_same_facts_and_streams_hosts_inflate(tmp_path, fixtures):
    """Same sha256, CRC-32, sizes and re-framed streams under every engine; compressed streams differ by encoder
    but inflate (on a host: the standard library) to the same bytes."""
    results = {}
    for fmt in ("zip", "legacy"):
        fx = fixtures["k0s-small-%s" % fmt]
        for name in _installed():
            out = tmp_path / fmt / name
            result = kp.split(fx["path"], dest=str(out / "libexec"), stripped_executable=str(out / "k0s"),
                              streams_dest=str(out / "streams"), engine=name)
            assert result["deflate_engine"] == engines.get(name).describe()
            assert dict((f["name"], f["sha256"]) for f in result["files"]) == \
                dict((n, b["sha256"]) for n, b in fx["binaries"].items())
            exe = result["stripped_executable"]
            streams.inflate_gzip_member(exe["stream"], str(out / "k0s.host"), exe["size"], exe["crc32"], exe["sha256"])
            assert fsio.sha256_file(str(out / "k0s.host")) == fsio.sha256_file(fx["bare_path"])
            results[fmt, name] = [(f["name"], f["size"], f["crc32"], f["sha256"], f["stream_sha256"]) for f in result["files"]] \
                + [(exe["size"], exe["crc32"], exe["sha256"])]
        assert len(set(json.dumps(results[fmt, name]) for name in _installed())) == 1, fmt


def test_isal_takes_zlib_levels(fixtures):
    """isal has levels 0-3 (its own module refuses 6): zlib's 0-9 and -1 are mapped, so callers keep zlib's scale."""
    engine = engines.get("isal", strict=False)
    if not isinstance(engine, engines.Engine):
        pytest.skip("isal not installed here: %s" % engine)
    with pytest.raises(ValueError):
        engine.module.compressobj(6, engine.DEFLATED, 31)
    data = open(fixtures["k0s-small-zip"]["binaries"]["runc"]["source"], "rb").read()
    sizes = {}
    for level in (-1, 0, 1, 6, 9):
        z = engine.compressobj(level, engine.DEFLATED, 31)
        member = z.compress(data) + z.flush()
        assert gzip.decompress(member) == data
        sizes[level] = len(member)
    assert sizes[-1] == sizes[6] and sizes[9] < sizes[1] < len(data)


BLOCKED = """
import json, sys
sys.modules["isal"] = None          # import isal / zlib_ng now raise ImportError, as on a controller without them
sys.modules["zlib_ng"] = None
sys.path.insert(0, sys.argv[1])
from module_utils import k0s_payload as kp
from module_utils.payload import engines
out = {"available": engines.available(), "results": {}}
for fmt, path, dest in zip(("zip", "legacy"), sys.argv[2:4], sys.argv[4:6]):
    r = kp.split(path, dest=dest + "/libexec", stripped_executable=dest + "/k0s", streams_dest=dest + "/streams")
    out["results"][fmt] = {"engine": r["deflate_engine"]["name"], "files": dict((f["name"], f["sha256"]) for f in r["files"]),
                           "stripped": r["stripped_executable"]["sha256"]}
try:
    engines.select("isal")
except kp.PayloadError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def test_split_works_without_the_fast_engines_installed(tmp_path, fixtures, monkeypatch):
    monkeypatch.delenv(engines.ENV, raising=False)
    fxs = [fixtures["k0s-small-zip"], fixtures["k0s-small-legacy"]]
    argv = [sys.executable, "-c", BLOCKED, PLUGINS] + [fx["path"] for fx in fxs] + [str(tmp_path / f) for f in ("z", "l")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["available"] == ["zlib"]
    assert "deflate engine 'isal' cannot be imported" in out["error"] and "pip install isal zlib-ng" in out["error"]
    for fmt, fx in zip(("zip", "legacy"), fxs):
        got = out["results"][fmt]
        assert got["engine"] == "zlib"
        assert got["files"] == dict((n, b["sha256"]) for n, b in fx["binaries"].items())
        assert got["stripped"] == fsio.sha256_file(fx["bare_path"])


def test_cli_verbose_names_the_engine(fixtures, monkeypatch):
    monkeypatch.delenv(engines.ENV, raising=False)
    exe = fixtures["k0s-small-legacy"]["path"]
    for argv, expected in (([], _installed()[0]), (["--engine", "zlib"], "zlib")):
        proc = subprocess.run([sys.executable, CLI, "info", exe, "-v", "--json"] + argv, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["deflate_engine"]["name"] == expected
        assert "k0s-payload: deflate engine %s %s (installed: %s;" % (
            expected, engines.get(expected).version, ", ".join(_installed())) in proc.stderr
    env = dict(os.environ, **{engines.ENV: "zlib"})
    proc = subprocess.run([sys.executable, CLI, "info", exe, "-v"], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0 and "deflate engine zlib" in proc.stderr and "FLEETSPLIT_DEFLATE_ENGINE=zlib" in proc.stderr


def test_a_cache_written_by_another_engine_is_kept(tmp_path, fixtures):
    """bin/k0s.gz differs by encoder; a re-run under another engine verifies it by inflating and writes nothing."""
    names = _installed()
    if len(names) < 2:
        pytest.skip("one deflate engine installed here: %s" % names)
    fx = fixtures["k0s-small-zip"]
    first = kp.split(fx["path"], dest=str(tmp_path / "libexec"), stripped_executable=str(tmp_path / "k0s"),
                     streams_dest=str(tmp_path / "streams"), engine=names[0])
    stream = first["stripped_executable"]["stream"]
    before = os.stat(stream)
    for name in names[1:]:
        again = kp.split(fx["path"], dest=str(tmp_path / "libexec"), stripped_executable=str(tmp_path / "k0s"),
                         streams_dest=str(tmp_path / "streams"), engine=name)
        assert again["deflate_engine"]["name"] == name and again["healed"] == []
        assert not again["stripped_executable"]["changed"] and not any(f["changed"] for f in again["files"])
        assert again["stripped_executable"]["stream_sha256"] == first["stripped_executable"]["stream_sha256"]
    assert os.stat(stream).st_ino == before.st_ino
