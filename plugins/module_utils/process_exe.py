# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""The file a running process executes, as the kernel shows it, also under binfmt emulation.

``/proc/<pid>/exe`` names the running file ("<path> (deleted)" once it was replaced). A program of another
architecture started through binfmt_misc (qemu-user: an arm64 host emulated on amd64, a cross-architecture
build or test container) shows the interpreter there instead, ``qemu-aarch64-static`` for every such
process. The program itself is then the interpreter's second argument (binfmt_misc passes interpreter,
program path, arguments) and the interpreter maps it: its path (resolved when it was opened, so a link
switched since does not matter) is read from ``/proc/<pid>/maps``.

Standard library only; parses on Python 3.6 (host side).
"""
import os

DELETED = " (deleted)"


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def mapped_program(pid, program, proc="/proc"):
    """The path of ``program``'s file as process ``pid`` maps it (with " (deleted)" when it is gone), or None.

    ``program`` is the path the process was started with; a mapping is taken when its file name is that
    path's (or its current target's) file name."""
    names = set([os.path.basename(program), os.path.basename(os.path.realpath(program))])
    for line in _read(os.path.join(proc, str(pid), "maps")).decode("utf-8", "surrogateescape").splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        path = fields[5]
        plain = path[:-len(DELETED)] if path.endswith(DELETED) else path
        if os.path.basename(plain) in names:
            return path
    return None


def process_executable(pid, proc="/proc"):
    """What process ``pid`` runs: /proc/<pid>/exe, or under qemu-user emulation the emulated program's file.
    None when the process is gone or unreadable."""
    base = os.path.join(proc, str(pid))
    try:
        exe = os.readlink(os.path.join(base, "exe"))
    except OSError:
        return None
    plain = exe[:-len(DELETED)] if exe.endswith(DELETED) else exe
    if not os.path.basename(plain).startswith("qemu-"):
        return exe
    try:
        args = _read(os.path.join(base, "cmdline")).split(b"\0")
        if len(args) < 2 or not args[1]:
            return exe
        found = mapped_program(pid, args[1].decode("utf-8", "surrogateescape"), proc)
    except OSError:
        return None
    return found if found is not None else exe
