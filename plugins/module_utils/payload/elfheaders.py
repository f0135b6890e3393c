# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s contributors
# Apache License 2.0 (see galaxy.yml)
"""The ELF file header, section and program header tables and section names, read with ``struct``.

Controller side. The payload library needs only these tables (where the image ends, the machine, a few
sections' bytes); importing pyelftools for them (its DWARF and construct modules, which import ``pdb``)
cost every split process about 0.035 CPU-s before anything could run in parallel (docs/performance.md).
``ElfImage`` offers the handful of pyelftools calls the library makes (``header``, ``elfclass``,
``little_endian``, ``iter_sections``, ``iter_segments``, ``get_section``, ``get_section_by_name``,
``num_sections``; sections and segments indexed by field name, ``sh_type``/``p_type``/``e_machine`` as
pyelftools names them), and a unit test compares it with pyelftools on every fixture executable.

Layout: the System V ABI's ELF header, section header and program header (gABI, "Object Files"); extended
numbering (``e_shnum`` 0, ``e_shstrndx`` SHN_XINDEX, ``e_phnum`` PN_XNUM: the real values in section 0)
as pyelftools reads it. Anything outside the file is refused with ElfFormatError.
"""

from __future__ import absolute_import, division, print_function

import struct

ELF_MAGIC = b"\x7fELF"
SHN_XINDEX = 0xFFFF
PN_XNUM = 0xFFFF

# (file header after e_ident, section header, program header): field names and struct codes per class
_HEADER_FIELDS = ("e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff", "e_flags", "e_ehsize",
                  "e_phentsize", "e_phnum", "e_shentsize", "e_shnum", "e_shstrndx")
_SECTION_FIELDS = ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link", "sh_info",
                   "sh_addralign", "sh_entsize")
_SEGMENT_FIELDS = {64: ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align"),
                   32: ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_flags", "p_align")}
_CODES = {64: ("HHIQQQIHHHHHH", "IIQQQQIIQQ", "IIQQQQQQ"), 32: ("HHIIIIIHHHHHH", "IIIIIIIIII", "IIIIIIII")}

# The names pyelftools gives (elftools/elf/enums.py); other values stay numbers, as there.
SECTION_TYPES = {0: "SHT_NULL", 1: "SHT_PROGBITS", 2: "SHT_SYMTAB", 3: "SHT_STRTAB", 4: "SHT_RELA", 5: "SHT_HASH",
                 6: "SHT_DYNAMIC", 7: "SHT_NOTE", 8: "SHT_NOBITS", 9: "SHT_REL", 10: "SHT_SHLIB", 11: "SHT_DYNSYM",
                 14: "SHT_INIT_ARRAY", 15: "SHT_FINI_ARRAY", 16: "SHT_PREINIT_ARRAY", 17: "SHT_GROUP",
                 18: "SHT_SYMTAB_SHNDX"}
SEGMENT_TYPES = {0: "PT_NULL", 1: "PT_LOAD", 2: "PT_DYNAMIC", 3: "PT_INTERP", 4: "PT_NOTE", 5: "PT_SHLIB",
                 6: "PT_PHDR", 7: "PT_TLS", 0x6474E550: "PT_GNU_EH_FRAME", 0x6474E551: "PT_GNU_STACK",
                 0x6474E552: "PT_GNU_RELRO", 0x6474E553: "PT_GNU_PROPERTY"}
MACHINES = {2: "EM_SPARC", 3: "EM_386", 4: "EM_68K", 8: "EM_MIPS", 15: "EM_PARISC", 20: "EM_PPC", 21: "EM_PPC64",
            22: "EM_S390", 40: "EM_ARM", 42: "EM_SH", 43: "EM_SPARCV9", 50: "EM_IA_64", 62: "EM_X86_64",
            183: "EM_AARCH64", 243: "EM_RISCV", 247: "EM_BPF", 258: "EM_LOONGARCH"}


class ElfFormatError(ValueError):
    """The file is not a well-formed ELF image (payload.elf turns it into a PayloadError)."""


class _Record(object):
    """One section or segment: fields by name (``record["sh_size"]``), as pyelftools' Section and Segment."""

    def __init__(self, image, fields, name=""):
        self._image = image
        self._fields = fields
        self.name = name

    def __getitem__(self, key):
        return self._fields[key]

    def data(self):
        """The section's bytes in the file (none for SHT_NOBITS)."""
        if self._fields.get("sh_type") == "SHT_NOBITS":
            return b""
        return self._image.read_at(self._fields["sh_offset"], self._fields["sh_size"], "section %r" % self.name)


class ElfImage(object):
    """The headers of the ELF file open as ``f`` (binary, seekable); ElfFormatError when they are not sound."""

    def __init__(self, f):
        self._f = f
        f.seek(0, 2)
        self.file_size = f.tell()
        ident = self.read_at(0, 16, "e_ident")
        if ident[:4] != ELF_MAGIC:
            raise ElfFormatError("no ELF magic")
        if ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise ElfFormatError("invalid EI_CLASS %d or EI_DATA %d" % (ident[4], ident[5]))
        self.elfclass = 32 if ident[4] == 1 else 64
        self.little_endian = ident[5] == 1
        order = "<" if self.little_endian else ">"
        header_code, section_code, segment_code = _CODES[self.elfclass]
        self._section = struct.Struct(order + section_code)
        self._segment = struct.Struct(order + segment_code)
        header = struct.Struct(order + header_code)
        self.header = dict(zip(_HEADER_FIELDS, header.unpack(self.read_at(16, header.size, "ELF header"))))
        self.header["e_machine"] = MACHINES.get(self.header["e_machine"], self.header["e_machine"])
        self._sections = self._read_sections()
        self._segments = self._read_segments()

    def read_at(self, offset, size, what):
        if offset < 0 or size < 0 or offset + size > self.file_size:
            raise ElfFormatError("%s (%d bytes at offset %d) lies outside the file (%d bytes)"
                                 % (what, size, offset, self.file_size))
        self._f.seek(offset)
        return self._f.read(size)

    def _table(self, offset, count, entsize, record, what):
        if count and entsize < record.size:
            raise ElfFormatError("%s entry size %d is smaller than %d" % (what, entsize, record.size))
        table = self.read_at(offset, count * entsize, what) if count else b""
        return [record.unpack_from(table, i * entsize) for i in range(count)]

    def _read_sections(self):
        header = self.header
        count, names_index = header["e_shnum"], header["e_shstrndx"]
        if header["e_shoff"] == 0:
            return []
        if count == 0 or names_index == SHN_XINDEX:   # extended numbering: the real values in section 0
            first = self._table(header["e_shoff"], 1, header["e_shentsize"], self._section, "section header 0")[0]
            count = count or first[5]
            names_index = first[6] if names_index == SHN_XINDEX else names_index
        rows = self._table(header["e_shoff"], count, header["e_shentsize"], self._section, "section header table")
        sections = [_Record(self, dict(zip(_SECTION_FIELDS, row))) for row in rows]
        for section in sections:
            section._fields["sh_type"] = SECTION_TYPES.get(section["sh_type"], section["sh_type"])
        if 0 < names_index < len(sections):
            names = sections[names_index].data()
            for section in sections:
                start = section["sh_name"]
                end = names.find(b"\x00", start)
                section.name = names[start:end if end != -1 else len(names)].decode("utf-8", "replace") \
                    if start < len(names) else ""
        return sections

    def _read_segments(self):
        header = self.header
        count = header["e_phnum"]
        if count == PN_XNUM and self._sections:
            count = self._sections[0]["sh_info"]
        if header["e_phoff"] == 0:
            return []
        rows = self._table(header["e_phoff"], count, header["e_phentsize"], self._segment, "program header table")
        segments = []
        for row in rows:
            fields = dict(zip(_SEGMENT_FIELDS[self.elfclass], row))
            fields["p_type"] = SEGMENT_TYPES.get(fields["p_type"], fields["p_type"])
            segments.append(_Record(self, fields))
        return segments

    def num_sections(self):
        return len(self._sections)

    def get_section(self, index):
        return self._sections[index]

    def iter_sections(self):
        return iter(self._sections)

    def iter_segments(self):
        return iter(self._segments)

    def get_section_by_name(self, name):
        """The section named ``name`` (the last one when several are: pyelftools' name map), or None."""
        for section in reversed(self._sections):
            if section.name == name:
                return section
        return None
