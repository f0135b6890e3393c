# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Paths inside an image root (the overlay of deploy_k0s): confined the way the kernel confines them, or refused.

An image root is a directory tree on the build machine whose symlinks mean something *inside the image*:
``etc -> /srv/etc`` names the image's ``/srv/etc``. The writers of the overlay (payload_split, k0s_service,
Ansible's file and template) use plain ``open()``/``mkdir()`` on the build machine, which follow the same link
to the build machine's ``/srv/etc``. This module resolves a path twice:

- **in the root**, as ``openat2(2)`` with ``RESOLVE_IN_ROOT`` does (man-pages 6.03, openat2(2)): "Treat the
  directory referred to by dirfd as the root directory while resolving pathname. Absolute symbolic links are
  interpreted relative to dirfd. If a prefix component of pathname equates to dirfd, then an immediately
  following .. component likewise equates to dirfd (just as /.. is traditionally equivalent to /)." The effect
  is "as though the calling process had used chroot(2)". systemd's ``chaseat()`` (src/basic/chase.c, flag
  ``CHASE_AT_RESOLVE_IN_ROOT``) walks a path the same way in user space, one component at a time: ``..`` at
  the root stays at the root, an absolute link target restarts at the root fd, and more than ``CHASE_MAX``
  steps give ``ELOOP``;
- **plainly**, as ``open()`` on the build machine would.

A path is accepted only when the plain walk never leaves the root and ends where the in-root walk ends:
then every write through it lands where the image expects it. Relative links that stay inside the root
(merged /usr: ``bin -> usr/bin``, ``var/run -> ../run``) pass; an absolute link on the way, or a relative
one climbing above the root, is refused with the path and the link named.

Also refused: path values that are not absolute and normalised, that have ``.``/``..`` components or control
characters; a root that is (or resolves to) ``/``; symlink loops (more than 40 links, the kernel's
MAXSYMLINKS); dangling links on the way (the writers cannot create through them); and a final component of
the wrong type (a symlink or directory where a regular file is written, a non-link where a link is made).

Not covered (the tree belongs to whoever runs the play): a tree changed between this check and the writes,
mount points and hard links inside the root. Pure Python, standard library only, read-only.
"""

import errno
import os
import posixpath
import stat

from ansible_collections.fleetsplit.k0s.plugins.module_utils.k0s_settings import control_char, path_problem

MAX_LINKS = 40          # the kernel's MAXSYMLINKS: more links than this in one walk is ELOOP
KINDS = ("dir", "file", "link")


class RootfsError(Exception):
    """A root, path value or path the overlay refuses; the message names the variable or path."""


class RootEscapeError(RootfsError):
    """A plain walk that leaves the root; ``link`` is the (image path, target) of the symlink that leads out."""

    def __init__(self, msg, link=None):
        RootfsError.__init__(self, msg)
        self.link = link


def check_path_value(name, value):
    """``value`` of variable ``name`` must be an absolute, normalised path without control characters (the
    one rule every path variable follows: k0s_settings.path_problem)."""
    problem = path_problem(name, value, plain=False)
    if problem:
        raise RootfsError(problem)
    return value


def check_root(root, name="k0s_overlay_root"):
    """The root's canonical path (its own symlinks followed: it is the directory the user named).

    Refuses ``/`` or a symlink chain that leads to it, a relative path, and an existing non-directory."""
    if not isinstance(root, str) or not root:
        raise RootfsError("%s must be a non-empty absolute path, got %r" % (name, root))
    bad = control_char(root)
    if bad:
        raise RootfsError("%s contains the control character %s: %r" % (name, bad, root))
    if not root.startswith("/"):
        raise RootfsError("%s=%r is not an absolute path" % (name, root))
    real = os.path.realpath(root)
    if real == "/":
        raise RootfsError("%s=%r resolves to / (the build machine itself): an overlay is written below a directory of "
                          "its own; to install on this machine, deploy to it through an inventory" % (name, root))
    if os.path.lexists(real) and not os.path.isdir(real):
        raise RootfsError("%s=%r (%s) exists and is not a directory" % (name, root, real))
    return real


def _components(path):
    return [c for c in path.split("/") if c not in ("", ".")]


def _inside(root, comps):
    """Image path of host components ``comps`` below ``root`` (a list of components)."""
    return "/" + "/".join(comps[len(root):])


def _walk(root, path, follow_last, in_root, meant=None):
    """Walk ``path`` (an image path) below ``root`` (canonical host path), one component at a time.

    ``in_root``: openat2 RESOLVE_IN_ROOT semantics (absolute targets and ``..`` stay in the root). Otherwise a
    plain walk, which raises RootEscapeError the moment it would leave the root, naming the link responsible
    (and ``meant``, the in-root result, when known).
    Returns (host path, lstat of the final component or None when it does not exist)."""
    base = _components(root)
    pos = list(base)
    # (component, the link whose target it came from, as (image path, target)) - None for the path itself.
    todo = [(c, None) for c in _components(path)]
    todo.reverse()
    links = 0
    missing = False     # below a missing component everything is lexical (what the play would create)
    while todo:
        comp, origin = todo.pop()
        if comp == "..":
            if len(pos) > len(base):
                pos.pop()
            elif not in_root:
                raise _escape(path, origin, root, "climbs above the overlay root", meant)
            continue
        if missing:
            pos.append(comp)
            continue
        here = "/" + "/".join(pos + [comp])
        try:
            st = os.lstat(here)
        except OSError as e:
            if e.errno == errno.ENOENT:
                if origin is not None and not in_root:
                    raise RootfsError("%s: %s -> %s is a dangling symlink (%s does not exist): create what it points "
                                      "to inside the root, or remove the link"
                                      % (path, origin[0], origin[1], _inside(base, pos + [comp])))
                missing = True
                pos.append(comp)
                continue
            if e.errno == errno.ENOTDIR:
                raise RootfsError("%s: %s is not a directory" % (path, _inside(base, pos)))
            raise RootfsError("%s: cannot inspect %s: %s" % (path, here, e.strerror))
        last = not todo
        if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
            links += 1
            if links > MAX_LINKS:
                raise RootfsError("%s: too many levels of symbolic links (more than %d, a loop?) at %s"
                                  % (path, MAX_LINKS, _inside(base, pos + [comp])))
            target = os.readlink(here)
            link = (_inside(base, pos + [comp]), target)
            if not target:
                raise RootfsError("%s: %s is an empty symlink" % (path, link[0]))
            if target.startswith("/"):
                if not in_root:
                    raise _escape(path, link, root, "is an absolute symlink", meant)
                pos = list(base)
            todo.extend(reversed([(c, link) for c in target.split("/") if c not in ("", ".")]))
            continue
        if not last and not stat.S_ISDIR(st.st_mode):
            raise RootfsError("%s: %s is not a directory" % (path, _inside(base, pos + [comp])))
        pos.append(comp)
    host = "/" + "/".join(pos)
    return host, os.lstat(host) if os.path.lexists(host) else None


def _escape(path, link, root, how, meant):
    if link is None:   # only reachable with an unchecked path value; check_path_value refuses '..'
        return RootEscapeError("%s climbs above the overlay root %s" % (path, root))
    link_path, target = link
    where = posixpath.normpath(target if target.startswith("/") else
                               posixpath.join(posixpath.dirname(root + link_path), target))
    image = "" if meant is None else " (inside the image it is %s)" % _inside(_components(root), _components(meant))
    return RootEscapeError(
        "refusing to write %s%s: %s -> %s %s; on this machine it leads to %s, outside the overlay root %s, where "
        "the overlay's files would land. Make it a relative link that stays inside the root (or remove it), "
        "or use another k0s_overlay_root" % (path, image, link_path, target, how, where, root), link)


def resolve_in_root(root, path, follow_last=True):
    """Where ``path`` lands with openat2(RESOLVE_IN_ROOT) on ``root``: (host path, final lstat or None)."""
    return _walk(root, path, follow_last, True)


def resolve_plain(root, path, follow_last=True):
    """Where a plain open() of ``root + path`` lands; RootfsError if that walk leaves ``root``."""
    return _walk(root, path, follow_last, False)


def check_write_path(root, path, kind="file"):
    """One path the overlay writes, checked below the canonical ``root`` (see check_root).

    ``kind``: ``dir`` (created or written into; followed to the end), ``file`` (a regular file replaced by
    rename; its parent followed, the file itself must not be a symlink), ``link`` (a symlink the play makes;
    its parent followed, the name itself must be absent or a symlink). Returns a dict with the image path,
    kind, the host path the writers must use and whether it exists."""
    if kind not in KINDS:
        raise RootfsError("%s: unknown kind %r (one of %s)" % (path, kind, ", ".join(KINDS)))
    check_path_value(path, path)
    follow = kind == "dir"
    try:
        meant = resolve_in_root(root, path, follow)[0]
    except RootfsError:
        meant = None    # a loop or a non-directory: the plain walk below names it (or the escape first)
    host, st = _walk(root, path, follow, False, meant)
    if host != meant:   # cannot happen once the plain walk stayed inside the root; kept as the definition
        raise RootfsError("refusing to write %s: on this machine it resolves to %s, in the image to %s"
                          % (path, host, meant))
    if st is not None:
        mode = st.st_mode
        if kind == "dir" and not stat.S_ISDIR(mode):
            raise RootfsError("%s (%s) exists and is not a directory" % (path, host))
        if kind == "file" and stat.S_ISLNK(mode):
            raise RootfsError("%s (%s) is a symlink to %s: the overlay writes a regular file there and never writes "
                              "through a link; remove it" % (path, host, os.readlink(host)))
        if kind == "file" and not stat.S_ISREG(mode):
            raise RootfsError("%s (%s) exists and is not a regular file" % (path, host))
        if kind == "link" and not stat.S_ISLNK(mode):
            raise RootfsError("%s (%s) exists and is not a symlink: the overlay makes a link there; remove it"
                              % (path, host))
    return {"path": path, "kind": kind, "host_path": host, "exists": st is not None}


def expand_names(paths, problems):
    """Entries with ``names`` stand for ``<path>/<name>`` per name; a name must be one plain component."""
    out = []
    for item in paths:
        names = item.get("names")
        if names is None:
            out.append(item)
            continue
        for name in names:
            if not name or "/" in name or name in (".", "..") or control_char(name):
                problems.append("%r is not a plain file name (below %s)" % (name, item["path"]))
                continue
            out.append(dict(item, path=item["path"].rstrip("/") + "/" + name, names=None))
    return out


def check_write_paths(root, paths, variables=None, root_name="k0s_overlay_root"):
    """Check the root, every path variable (name -> value) and every path (dicts: path, kind, origin, and
    optionally names: see expand_names).

    Collects every problem before failing, so one run names them all. Returns (canonical root, [result of
    check_write_path with ``origin``]); raises RootfsError with one line per problem."""
    problems = []
    for name in sorted(variables or {}):
        try:
            check_path_value(name, variables[name])
        except RootfsError as e:
            problems.append(str(e))
    real = check_root(root, root_name)   # nothing below makes sense without a root
    checked = []
    for item in expand_names(paths, problems):
        origin = item.get("origin")
        try:
            res = check_write_path(real, item["path"], item.get("kind") or "file")
        except RootfsError as e:
            problems.append("%s%s" % ("(%s) " % origin if origin else "", e))
            continue
        res["origin"] = origin
        checked.append(res)
    if problems:
        raise RootfsError("; ".join(problems) if len(problems) == 1 else
                          "%d problems:\n- %s" % (len(problems), "\n- ".join(problems)))
    return real, checked
