"""The seccomp filter every bubblewrap episode runs under: one process, no kernel side doors.

Namespaces give the harness its own view of files, processes and the network, but they
leave four things open that this filter closes:

* **Limits a child could multiply.** RLIMIT_AS and RLIMIT_CPU bind one process; a fork
  would get fresh ones. Cgroups would bound a whole tree, but the only portable way to
  get one is systemd or root (this machine has cgroup v1 and no delegation), so instead
  the episode is kept to one process: `clone` without `CLONE_THREAD`, `fork` and `vfork`
  fail with EPERM, and `clone3` answers ENOSYS so the C library falls back to `clone`
  for threads (whose flags a classic BPF filter can read; `clone3`'s are behind a pointer).
  Threads share the address space, so RLIMIT_AS bounds them all.
* **Kernel interfaces that are not namespaced**: the kernel keyrings (`keyctl`, `add_key`,
  `request_key`) are keyed by the host uid, so a sandbox could read the user's keys.
* **Interfaces that bypass or widen the boundary**: io_uring (its operations are not
  seen by seccomp), `ptrace` and `process_vm_*` (the sandbox shows no other process, but
  should a mount ever leak one, these would read its memory), `unshare`/`setns`/`mount`
  and friends (a nested user namespace re-grants capabilities), bpf, perf events,
  userfaultfd, module and kexec loading, handle-based opens.
* **Sockets other than a client's.** `socket` makes Unix stream sockets only, and `listen`
  fails: a harness can connect to its gateway socket and to nothing else, since no process
  of its network namespace listens. So the episodes of one fork server, which share the
  server's network namespace (loopback alone, made by bwrap), have no socket to meet on:
  no TCP or UDP on loopback, no abstract listener, no datagram socket (whose autobound or
  abstract address a sibling could write to). A network namespace per episode would fence
  the same at the price of a network stack the kernel builds and tears down for each one.

A fork server (`sia.harness.zygote`) runs under `fork_server_filter`, which allows what
starting an episode takes (fork, unshare, setns, mount); each episode installs this filter on
top of it before any harness code runs, and filters only ever add up.

Every other system call is allowed: the mount namespace, not a list of allowed calls,
decides what the harness can see, so the filter stays small and fast (a linear scan of
some forty comparisons). Calls from a foreign ABI (i386, x32) kill the process, since
their numbers would not match the table. Landlock is not used: the mount namespace
already shows the harness nothing writable but its own tmpfs.
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
CLONE_THREAD = 0x00010000

_DENIED_NAMES = (
    "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "keyctl", "add_key",
    "request_key", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
    "name_to_handle_at", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "swapon", "swapoff", "reboot", "acct", "quotactl", "listen",
)

SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "clone": 56, "clone3": 435, "fork": 57, "vfork": 58, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250, "add_key": 248,
        "request_key": 249, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 246,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304,
        "name_to_handle_at": 303, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "swapon": 167,
        "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179, "socket": 41, "listen": 50,
    },
    "aarch64": {
        "clone": 220, "clone3": 435, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "keyctl": 219, "add_key": 217, "request_key": 218,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 104, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "swapon": 224,
        "swapoff": 225, "reboot": 142, "acct": 89, "quotactl": 60, "socket": 198, "listen": 201,
    },
}
"""System call numbers per machine; aarch64 has no fork or vfork (it forks through clone)."""

_LD_W_ABS = 0x20
_AND_K = 0x54
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ALLOW = 0x7FFF0000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0, _OFFSET_ARG1 = 0, 4, 16, 24
AF_UNIX, SOCK_STREAM, SOCK_TYPE_MASK = 1, 1, 0xF


def _errno(code: int) -> int:
    return 0x00050000 | code


class UnsupportedMachine(RuntimeError):
    """No system call table for this machine, so no filter can be built."""


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


@functools.cache
def episode_filter(machine: str | None = None) -> bytes:
    """The filter as a classic BPF program, in the byte layout `bwrap --seccomp FD` reads.

    Built in pure Python (no libseccomp): a little-endian `struct sock_filter` array.
    """
    return _program(machine, _DENIED_NAMES, one_process=True)


SERVER_NEEDS = ("fork", "vfork", "unshare", "setns", "mount")
"""What the fork server (`sia.harness.zygote`) does to start an episode: fork, make its namespaces
(and return to its own pid namespace), mount its files. Each episode adds `episode_filter` on top
before any harness code runs."""


@functools.cache
def fork_server_filter(machine: str | None = None) -> bytes:
    """The fork server's filter: the episodes' but for what starting an episode needs."""
    return _program(machine, tuple(n for n in _DENIED_NAMES if n not in SERVER_NEEDS),
                    one_process=False)


def _program(machine: str | None, denied: tuple[str, ...], *, one_process: bool) -> bytes:
    machine = machine or platform.machine()
    table = SYSCALLS.get(machine)
    if table is None:
        raise UnsupportedMachine(f"no seccomp table for {machine} (known: {', '.join(SYSCALLS)})")
    program = [_insn(_LD_W_ABS, 0, 0, _OFFSET_ARCH),
               _insn(_JEQ_K, 1, 0, AUDIT_ARCH[machine]),
               _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),
               _insn(_LD_W_ABS, 0, 0, _OFFSET_NR)]
    if machine == "x86_64":
        program += [_insn(_JGE_K, 0, 1, X32_SYSCALL_BIT), _insn(_RET_K, 0, 0, _RET_KILL_PROCESS)]
    for name in denied:
        if name in table:
            program += [_insn(_JEQ_K, 0, 1, table[name]), _insn(_RET_K, 0, 0, _errno(errno.EPERM))]
    program += [_insn(_JEQ_K, 0, 1, table["clone3"]), _insn(_RET_K, 0, 0, _errno(errno.ENOSYS))]
    if one_process:
        program += [_insn(_JEQ_K, 0, 4, table["clone"]),
                    _insn(_LD_W_ABS, 0, 0, _OFFSET_ARG0),
                    _insn(_JSET_K, 0, 1, CLONE_THREAD),
                    _insn(_RET_K, 0, 0, _RET_ALLOW),
                    _insn(_RET_K, 0, 0, _errno(errno.EPERM))]
    program += [_insn(_JEQ_K, 0, 6, table["socket"]),  # else on to the final allow
                _insn(_LD_W_ABS, 0, 0, _OFFSET_ARG0),
                _insn(_JEQ_K, 0, 3, AF_UNIX),
                _insn(_LD_W_ABS, 0, 0, _OFFSET_ARG1),
                _insn(_AND_K, 0, 0, SOCK_TYPE_MASK),  # without SOCK_NONBLOCK and SOCK_CLOEXEC
                _insn(_JEQ_K, 1, 0, SOCK_STREAM),
                _insn(_RET_K, 0, 0, _errno(errno.EPERM))]
    return b"".join([*program, _insn(_RET_K, 0, 0, _RET_ALLOW)])
