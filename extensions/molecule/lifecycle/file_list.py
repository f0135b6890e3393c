"""Print what a test host holds, one sorted line per entry, for comparing a host before deploy_k0s and
after reset_k0s (the lifecycle scenario).

    file_list.py files /var/log /root/.ansible    # every path on the root filesystem but those subtrees:
                                                   # "<type> <path>", symlinks with "-> <target>"
    file_list.py procs                              # processes of k0s and the binaries it runs

Like `find / -xdev`: other filesystems (/proc, /sys, /run, /tmp, /dev in a podman host) are not entered.
Standard library only (the Alpine host's busybox find has no -printf).
"""
import os
import stat
import sys

K0S_PROGRAMS = ("k0s", "kubelet", "containerd", "containerd-shim-runc-v2", "runc", "etcd", "kine",
                "kube-apiserver", "kube-scheduler", "kube-controller-manager", "konnectivity-server")


def kind(mode):
    for test, letter in ((stat.S_ISLNK, "l"), (stat.S_ISDIR, "d"), (stat.S_ISREG, "f")):
        if test(mode):
            return letter
    return "o"


def files(excluded):
    root_dev = os.lstat("/").st_dev
    lines = []
    for top, dirs, names in os.walk("/"):
        for name in list(dirs) + names:
            path = os.path.join(top, name)
            if any(path == e or path.startswith(e + "/") for e in excluded):
                if name in dirs:
                    dirs.remove(name)
                continue
            st = os.lstat(path)
            line = "%s %s" % (kind(st.st_mode), path)
            if stat.S_ISLNK(st.st_mode):
                line += " -> " + os.readlink(path)
            lines.append(line)
            if name in dirs and (st.st_dev != root_dev or stat.S_ISLNK(st.st_mode)):
                dirs.remove(name)  # a mount point is listed, not entered (find -xdev)
    return sorted(lines)


def procs():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        program = os.path.basename(argv[0].decode(errors="replace"))
        if program in K0S_PROGRAMS:
            found.append("%s %s" % (pid, b" ".join(argv).decode(errors="replace").strip()))
    return found


if __name__ == "__main__":
    out = files(sys.argv[2:]) if sys.argv[1] == "files" else procs()
    sys.stdout.write("".join(line + "\n" for line in out))
