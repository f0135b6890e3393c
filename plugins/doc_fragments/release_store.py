# -*- coding: utf-8 -*-
# Copyright: fleetsplit.k0s maintainers
# Apache License 2.0 (see LICENSE)
"""Options and notes of fleetsplit.k0s.k0s_release about the host's release store checks (kept here so the
module stays within the project's 450-line limit)."""


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  verify:
    description:
      - Re-hash every file of the target release. By default a file whose size and mtime match its
        C(manifest.json) record is trusted and only changed files are re-hashed, which keeps re-runs fast.
    type: bool
    default: false
  selinux_relabel:
    description:
      - When SELinux is enabled (C(selinuxenabled) exits 0), label C(containerd), C(containerd-shim-runc-v2)
        and C(runc) with C(container_runtime_exec_t) as k0s does. Silently skipped otherwise.
    type: bool
    default: true
notes:
  - Security checks. Every directory written into, and each of its parents, must be owned by root (or the
    user running the module) and must not be world-writable unless it is owned by root and has the sticky bit.
    Symlinks along these paths must be owned by root (or that user). Directories inside the store must be real
    directories. Violations fail with a message naming the path.
  - All files are written to a temporary name and renamed into place; files are C(root:root 0755) when run as root.
  - A store-wide lock (C(<store_dir>/.lock)) serialises concurrent runs on one host.
  - Killed runs leave only temporary names (C(.<id>.tmp-*), C(.*.fleetsplit-tmp-*)); the next V(present) removes them.
"""
