"""First process inside ``unshare`` (user, mount, network and PID namespaces): ``python -m
attention_np.grading._sandbox_init RO_FOLDER ... -- COMMAND ...``.

It brings the namespace's own loopback up (the kernel and nbval talk over it), bind-mounts each
folder read-only, drops every capability, then replaces itself with the command. Only the standard library and libc.
"""
import ctypes
import fcntl
import os
import socket
import struct
import sys

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def read_only(path: str):
    libc = ctypes.CDLL(None, use_errno=True)
    p = path.encode()
    if libc.mount(p, p, None, MS_BIND | MS_REC, None) != 0:
        raise OSError(ctypes.get_errno(), f"bind mount of {path} failed")
    if libc.mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0:
        raise OSError(ctypes.get_errno(), f"read-only remount of {path} failed")


def drop_capabilities():
    """Empty the capability bounding set and forbid new privileges: after exec the command has no
    capability, so it cannot undo the read-only mounts (which, made in this namespace, are not locked)."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)   # fails quietly past the last capability
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def main(argv):
    split = argv.index("--")
    folders, cmd = argv[:split], argv[split + 1:]
    loopback_up()
    for folder in folders:
        read_only(folder)
    drop_capabilities()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
