# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""The ELF side of a k0s executable: where the image ends, its machine, the k0s version compiled into it and
Go's build info.

Two readers with one interface: ``payload.elfheaders`` (``struct``, the few calls made here) for the split, whose
start-up it keeps free of pyelftools' import (~0.035 CPU-s that nothing overlaps), and pyelftools itself, the
reference parser, for the inspection (``payload_info``, ``k0s-payload info``, Go build info): ``open_elf(...,
reference=True)``. Both give the same answers on every fixture ELF (tests/unit/test_payload_parts.py compares them).
pyelftools is found without importing it (``HAS_PYELFTOOLS``); without it the inspection reports
``PYELFTOOLS_IMPORT_ERROR`` (missing_required_lib). Controller side only.
"""

from __future__ import absolute_import, division, print_function

import os
import re
import stat
import struct
import sys
from importlib.util import find_spec

from .elfheaders import ElfFormatError, ElfImage
from .errors import PayloadError

PYELFTOOLS_IMPORT_ERROR = None if find_spec("elftools") is not None else \
    "ImportError: No module named 'elftools' (pyelftools is not installed for %s)" % sys.executable
HAS_PYELFTOOLS = PYELFTOOLS_IMPORT_ERROR is None

_K0S_VERSION = re.compile(rb"v[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.]+)?\+k0s\.[0-9]+")
_GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"

# uname -m spelling, so results compare with Ansible's ansible_architecture.
_ELF_MACHINES = {
    "EM_X86_64": "x86_64",
    "EM_AARCH64": "aarch64",
    "EM_ARM": "armv7l",
    "EM_386": "i386",
    "EM_RISCV": "riscv64",
    "EM_S390": "s390x",
    "EM_PPC64": "ppc64le",
}


def open_executable(path):
    """(open file, os.stat result) of the k0s executable; PayloadError when it is missing, unreadable or not a file."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise PayloadError("cannot read k0s executable %s: %s" % (path, e.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise PayloadError("k0s executable %s is not a regular file" % path)
    try:
        f = open(path, "rb")
    except (IOError, OSError) as e:
        raise PayloadError("cannot read k0s executable %s: %s" % (path, e.strerror))
    return f, st


def open_elf(f, path, reference=False):
    """The ELF headers of the open file ``f``: ``elfheaders.ElfImage``, or with ``reference`` pyelftools' ELFFile
    (PayloadError without pyelftools). PayloadError for anything not ELF."""
    if reference and not HAS_PYELFTOOLS:
        raise PayloadError("reading the ELF headers of %s needs pyelftools (pip install pyelftools): %s"
                           % (path, PYELFTOOLS_IMPORT_ERROR.strip().splitlines()[-1]))
    f.seek(0)
    magic = f.read(4)
    if magic != b"\x7fELF":
        raise PayloadError("%s is not an ELF executable (starts with %r)" % (path, magic))
    f.seek(0)
    if reference:
        from elftools.common.exceptions import ELFError   # here: the split never pays for this import
        from elftools.elf.elffile import ELFFile
        errors = (ELFError, struct.error)
    else:
        ELFFile, errors = ElfImage, (ElfFormatError, struct.error)
    try:
        return ELFFile(f)
    except errors as e:
        raise PayloadError("%s: cannot parse ELF headers: %s" % (path, e))


def elf_end(elf):
    """Offset just past everything the ELF image describes.

    Segment ends alone are not enough (Go puts the section header table near the start), so take the
    maximum over sections with file contents, the section and program header tables and segments.
    """
    header = elf.header
    end = header["e_ehsize"]
    end = max(end, header["e_phoff"] + header["e_phnum"] * header["e_phentsize"])
    end = max(end, header["e_shoff"] + header["e_shnum"] * header["e_shentsize"])
    for segment in elf.iter_segments():
        end = max(end, segment["p_offset"] + segment["p_filesz"])
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOBITS":
            end = max(end, section["sh_offset"] + section["sh_size"])
    return end


def elf_machine(elf):
    """The machine in ``uname -m`` spelling (x86_64, aarch64, armv7l, ...)."""
    machine = elf.header["e_machine"]
    name = _ELF_MACHINES.get(machine, str(machine).replace("EM_", "").lower())
    if name == "ppc64le" and not elf.little_endian:
        name = "ppc64"
    return name


def section_bytes(elf, name):
    """Contents of section ``name``, None when it is missing or has no file contents."""
    section = elf.get_section_by_name(name)
    if section is None or section["sh_type"] == "SHT_NOBITS":
        return None
    return section.data()


def k0s_version(elf):
    """The k0s version compiled into the program (``v1.36.3+k0s.0``), or None.

    Go lays string literals out back to back, so a regex over .rodata can run into the next string's
    digits. A version held in a variable has a string header (pointer, length) in .data or .noptrdata:
    that header gives the exact length. Without one, fall back to the most frequent match.
    """
    rodata = elf.get_section_by_name(".rodata")
    if rodata is None or rodata["sh_type"] == "SHT_NOBITS":
        return None
    text = rodata.data()
    candidates = dict((rodata["sh_addr"] + m.start(), m.group()) for m in _K0S_VERSION.finditer(text))
    if not candidates:
        return None
    word = 8 if elf.elfclass == 64 else 4
    order = "<" if elf.little_endian else ">"
    pointer = order + ("Q" if word == 8 else "I")
    header = order + ("QQ" if word == 8 else "II")
    for name in (".data", ".noptrdata"):
        data = section_bytes(elf, name) or b""
        for address, match in sorted(candidates.items()):
            needle = struct.pack(pointer, address)
            pos = data.find(needle)
            while pos != -1:
                if pos % word == 0 and pos + 2 * word <= len(data):
                    length = struct.unpack_from(header, data, pos)[1]
                    if 0 < length <= len(match) and _K0S_VERSION.fullmatch(match[:length]):
                        return match[:length].decode("ascii")
                pos = data.find(needle, pos + 1)
    counts = {}
    for match in candidates.values():
        counts[match] = counts.get(match, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0].decode("ascii")


def _uvarint(data, pos):
    """Go's unsigned varint at ``pos``: (value, position after it)."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _go_modinfo(elf):
    """(Go version, modinfo text) from ``.go.buildinfo`` (Go >= 1.18 layout), or None."""
    data = section_bytes(elf, ".go.buildinfo")
    if not data or not data.startswith(_GO_BUILDINFO_MAGIC) or len(data) < 32:
        return None
    if not data[15] & 0x2:
        return False     # pre-Go-1.18 layout (pointer-based): not decoded
    pos = 32
    strings = []
    for dummy in range(2):
        length, pos = _uvarint(data, pos)
        strings.append(data[pos:pos + length].decode("utf-8", "replace"))
        pos += length
    go_version, modinfo = strings
    # modinfo is framed by 16-byte sentinels; its lines are tab-separated "path", "mod", "dep", "build" records.
    return go_version, modinfo[16:-16] if len(modinfo) >= 32 else modinfo


def go_build_settings(elf):
    """Go version and the ``build`` settings (``-ldflags``, ``GOOS``, ...) recorded in the executable: (str, dict)."""
    found = _go_modinfo(elf)
    if not found:
        return None, {}
    settings = {}
    for line in found[1].splitlines():
        fields = line.split("\t", 1)
        if fields[0] == "build" and len(fields) > 1 and "=" in fields[1]:
            key, value = fields[1].split("=", 1)
            settings[key] = value
    return found[0] or None, settings


def go_build_info(path):
    """Go version and main module of a Go executable (from ``.go.buildinfo``), or None."""
    with open(path, "rb") as f:
        try:
            elf = open_elf(f, path, reference=True)
        except PayloadError:
            return None
        found = _go_modinfo(elf)
    if found is None:
        return None
    if found is False:
        return {"go_version": None, "path": None, "main_module": None, "main_version": None,
                "note": "pre-Go-1.18 build info layout (pointer-based) is not decoded"}
    go_version, body = found
    info = {"go_version": go_version or None, "path": None, "main_module": None, "main_version": None}
    for line in body.splitlines():
        fields = line.split("\t")
        if fields[0] == "path" and len(fields) > 1:
            info["path"] = fields[1]
        elif fields[0] == "mod" and len(fields) > 2:
            info["main_module"] = fields[1]
            info["main_version"] = fields[2]
    return info
