"""Load netmon.bpf.o into the kernel through the system's libbpf.so.1 (ctypes).

`Probe.open()` opens and loads the object, attaches its seven programs to
the root of the cgroup v2 hierarchy as *unpinned* bpf_links, and gives the
maps' file descriptors to the readers below. Unpinned links belong to this
process: the kernel detaches them when it exits, even by SIGKILL, so a
crashed daemon leaves nothing attached and a restart never counts twice
(pinned links or old-style BPF_PROG_ATTACH would stay).

Anything missing (not root nor CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN, no
libbpf.so.1, no cgroup v2 mount, an old kernel, no object built, the
verifier refusing) raises `EbpfUnavailable` with one sentence saying why;
`unavailable_reason()` checks the cheap ones without loading anything.

Reading: `owners()` and `udp_counts()` copy a whole map with
BPF_MAP_LOOKUP_BATCH (one syscall per 4096 entries: ~2 ms per 1,000, where
key-by-key lookups cost seven times more). `delete_*()` drop the entries of
sockets whose last values were read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import socket
import struct
import threading
from typing import Any, Iterable, NamedTuple

log = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
OBJECT_PATH = os.path.join(HERE, "netmon.bpf.o")
LIBBPF_NAME = "libbpf.so.1"

#: Oldest kernel with everything the programs use: cgroup bpf_links (5.7),
#: cgroup/sock_release (5.9), bpf_sock_ops->sk (5.10).
MIN_KERNEL = (5, 10)
#: Linux capability numbers (linux/capability.h).
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39

#: Program names (netmon.bpf.c); bpftool lists them so ("nm_" prefix).
PROGRAMS = ("nm_sock_create", "nm_connect4", "nm_connect6", "nm_sockops",
            "nm_sock_release", "nm_skb_ingress", "nm_skb_egress")
#: Entry flag set by nm_sock_release: the socket's file is closed.
RELEASED = 1
#: max_entries of the two maps (netmon.bpf.c: MAX_OWNERS, MAX_UDP).
OWNERS_CAPACITY = 65536
UDP_CAPACITY = 65536

#: struct owner: tgid, uid, flags, pad, comm[16].
_OWNER = struct.Struct("=IIII16s")
#: struct udp_counts: 4 x u64, flags, family, local_ip[16], remote_ip[16], ports, pad.
_UDP = struct.Struct("=QQQQII16s16sHHI")
_BATCH = 4096


class EbpfUnavailable(Exception):
    """Root mode cannot run here; str() says why, in one sentence."""


class Owner(NamedTuple):
    """Who created, connected or (for an accepted socket) listened on a socket."""

    pid: int
    uid: int
    comm: str
    released: bool


class UdpCounts(NamedTuple):
    """Payload bytes and datagrams of one UDP socket since the daemon started."""

    bytes_sent: int
    bytes_received: int
    packets_sent: int
    packets_received: int
    released: bool
    family: int  # socket.AF_INET | socket.AF_INET6
    local_addr: bytes  # 16 raw bytes, IPv4 in the first 4 (as netlink.DiagSocket)
    remote_addr: bytes
    local_port: int
    remote_port: int  # 0: not connected


# -- detection -----------------------------------------------------------------------------------
def cgroup2_mount(mounts_path: str = "/proc/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified in hybrid mode)."""
    try:
        with open(mounts_path) as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return fields[1].replace("\\040", " ")
    except OSError:
        return None
    return None


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The CapEff bit mask of this process (0 when unreadable)."""
    try:
        with open(status_path) as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def missing_capabilities(caps: int) -> list[str]:
    """Names of the capabilities root mode lacks (CAP_SYS_ADMIN stands for BPF+PERFMON)."""
    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    missing = []
    if not (has(CAP_BPF) or has(CAP_SYS_ADMIN)):
        missing.append("CAP_BPF")
    if not (has(CAP_PERFMON) or has(CAP_SYS_ADMIN)):
        missing.append("CAP_PERFMON")
    if not has(CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    return missing


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as '6.18.44-fc-v1147'; (0, 0) if unparsable."""
    match = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def unavailable_reason(object_path: str = OBJECT_PATH) -> str | None:
    """Why root mode cannot run, checking what is cheap to check; None if it may."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return "eBPF root mode is Linux only"
    missing = missing_capabilities(effective_capabilities())
    if missing:
        # What follows from it is said once, by the status warning (linux.py).
        return f"not running as root (uid {os.geteuid()}) and without {'+'.join(missing)}"
    major, minor = kernel_version()
    if (major, minor) < MIN_KERNEL:
        return f"kernel {major}.{minor} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}"
    if cgroup2_mount() is None:
        return "no cgroup v2 hierarchy is mounted (see /proc/mounts)"
    if not os.path.exists(object_path):
        return (f"the BPF object {object_path} was not built (clang and libbpf-dev are needed "
                "when the package is built: `make`)")
    try:
        _libbpf()
    except OSError as exc:
        return f"{LIBBPF_NAME} cannot be loaded ({exc}): install libbpf1"
    return None


# -- libbpf through ctypes ---------------------------------------------------------------------------
_lib: ctypes.CDLL | None = None
#: libbpf's print callback: libbpf keeps a pointer to it, so it must outlive the library.
_print_callback: Any = None
_lib_lock = threading.Lock()
#: libbpf's messages during one open(): its print callback appends here.
_messages: list[str] = []
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def _libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the prototypes used here (loaded once)."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        lib = ctypes.CDLL(LIBBPF_NAME, use_errno=True)
        vp, cp, i, u32p = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)
        for name, restype, argtypes in (
            ("bpf_object__open_mem", vp, [vp, ctypes.c_size_t, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__find_program_by_name", vp, [vp, cp]),
            ("bpf_object__find_map_fd_by_name", i, [vp, cp]),
            ("bpf_program__attach_cgroup", vp, [vp, i]),
            ("bpf_link__destroy", i, [vp]),
            ("bpf_map_lookup_batch", i, [i, vp, vp, vp, vp, u32p, vp]),
            ("bpf_map_delete_elem", i, [i, vp]),
            ("libbpf_set_print", vp, [_PRINT_FN]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.vsnprintf.restype = ctypes.c_int
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

        def on_print(level: int, fmt: bytes, args: int) -> int:
            buffer = ctypes.create_string_buffer(1024)
            libc.vsnprintf(buffer, len(buffer), fmt, args)
            text = buffer.value.decode("utf-8", "replace").rstrip()
            if text:
                _messages.append(text)
                del _messages[:-200]
                log.debug("libbpf: %s", text)
            return 0

        global _print_callback
        _print_callback = _PRINT_FN(on_print)  # kept alive with the library (a module global)
        lib.libbpf_set_print(_print_callback)
        _lib = lib
        return lib


def owner_from_record(record: tuple) -> Owner:
    """An Owner from a raw owner record (see Probe.owner_records)."""
    tgid, uid, flags, _pad, comm = record
    return Owner(tgid, uid, comm.split(b"\0", 1)[0].decode("utf-8", "replace"), bool(flags & RELEASED))


def _errno_text(code: int) -> str:
    code = abs(code)
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


class Probe:
    """The loaded programs and their maps; close() (or exit) detaches everything."""

    def __init__(self, lib: ctypes.CDLL, obj: int, links: list[int], owners_fd: int, udp_fd: int) -> None:
        self._lib = lib
        self._obj = obj
        self._links = links
        self._owners_fd = owners_fd
        self._udp_fd = udp_fd
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, object_path: str = OBJECT_PATH) -> "Probe":
        """Load and attach; raises EbpfUnavailable with the reason on any failure."""
        reason = unavailable_reason(object_path)
        if reason:
            raise EbpfUnavailable(reason)
        lib = _libbpf()
        with open(object_path, "rb") as f:
            image = f.read()
        buffer = ctypes.create_string_buffer(image, len(image))
        cgroup_root = cgroup2_mount()
        if cgroup_root is None:  # unmounted since unavailable_reason() looked
            raise EbpfUnavailable("no cgroup v2 hierarchy is mounted (see /proc/mounts)")
        del _messages[:]
        obj = lib.bpf_object__open_mem(buffer, len(image), None)
        if not obj:
            raise EbpfUnavailable(f"libbpf could not open {object_path} ({_errno_text(ctypes.get_errno())})")
        links: list[int] = []
        try:
            err = lib.bpf_object__load(obj)
            if err:
                detail = next((m for m in reversed(_messages) if "failed" in m or "invalid" in m.lower()), "")
                raise EbpfUnavailable(f"the kernel refused the BPF programs ({_errno_text(err)})"
                                      + (f": {detail}" if detail else ""))
            cgroup_fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for name in PROGRAMS:
                    prog = lib.bpf_object__find_program_by_name(obj, name.encode())
                    if not prog:
                        raise EbpfUnavailable(f"the BPF object has no program {name}")
                    link = lib.bpf_program__attach_cgroup(prog, cgroup_fd)
                    if not link:
                        raise EbpfUnavailable(
                            f"attaching {name} to {cgroup_root} failed ({_errno_text(ctypes.get_errno())})")
                    links.append(link)
            finally:
                os.close(cgroup_fd)
            owners_fd = lib.bpf_object__find_map_fd_by_name(obj, b"owners")
            udp_fd = lib.bpf_object__find_map_fd_by_name(obj, b"udp_counts")
            if owners_fd < 0 or udp_fd < 0:
                raise EbpfUnavailable("the BPF object lacks its maps (owners, udp_counts)")
        except BaseException:
            for link in links:
                lib.bpf_link__destroy(link)
            lib.bpf_object__close(obj)
            raise
        log.debug("eBPF programs attached to %s", cgroup_root)
        return cls(lib, obj, links, owners_fd, udp_fd)

    # -- reading -------------------------------------------------------------------------------
    def owner_records(self) -> dict[int, tuple]:
        """cookie -> raw (tgid, uid, flags, pad, comm bytes) of every entry: cheap, for every tick.

        `owner_from_record` turns one into an Owner, where it is needed.
        """
        keys, values = self._read_map(self._owners_fd, _OWNER.size, OWNERS_CAPACITY)
        return dict(zip(keys, _OWNER.iter_unpack(values)))

    def owners(self) -> dict[int, Owner]:
        """cookie -> Owner for every socket the programs have seen (and not yet deleted)."""
        return {cookie: owner_from_record(record) for cookie, record in self.owner_records().items()}

    def udp_counts(self) -> dict[int, UdpCounts]:
        """cookie -> UdpCounts of every UDP socket that moved a datagram."""
        out = {}
        inet6 = socket.AF_INET6
        keys, values = self._read_map(self._udp_fd, _UDP.size, UDP_CAPACITY)
        for cookie, record in zip(keys, _UDP.iter_unpack(values)):
            sent, received, psent, preceived, flags, family, local, remote, lport, rport, _ = record
            if family != inet6:  # IPv4 in the first 4 bytes; keep DiagSocket's 16-byte form
                local, remote = local[:4] + bytes(12), remote[:4] + bytes(12)
            out[cookie] = UdpCounts(sent, received, psent, preceived, bool(flags & RELEASED),
                                    family, local, remote, lport, rport)
        return out

    def _read_map(self, fd: int, value_size: int, capacity: int) -> tuple[list[int], bytes]:
        """(keys, their values end to end) of every entry, read in batches of _BATCH."""
        all_keys: list[int] = []
        chunks: list[bytes] = []
        with self._lock:
            if self._closed:
                return all_keys, b""
            lib = self._lib
            keys = (ctypes.c_uint64 * _BATCH)()
            values = ctypes.create_string_buffer(value_size * _BATCH)
            token_in, token_out = ctypes.c_uint64(0), ctypes.c_uint64(0)
            count = ctypes.c_uint32()
            first = True
            while len(all_keys) <= capacity:
                count.value = _BATCH
                err = lib.bpf_map_lookup_batch(fd, None if first else ctypes.byref(token_in),
                                               ctypes.byref(token_out), keys, values, ctypes.byref(count), None)
                done = err == -errno.ENOENT
                if err and not done:
                    raise OSError(-err, f"BPF map batch lookup failed ({_errno_text(err)})")
                n = count.value
                all_keys += keys[:n]
                chunks.append(values.raw[: n * value_size])
                if done:
                    break
                token_in.value = token_out.value
                first = False
        return all_keys, b"".join(chunks)

    def delete_owners(self, cookies: Iterable[int]) -> int:
        return self._delete(self._owners_fd, cookies)

    def delete_udp(self, cookies: Iterable[int]) -> int:
        return self._delete(self._udp_fd, cookies)

    def _delete(self, fd: int, cookies: Iterable[int]) -> int:
        """Delete entries (ones already evicted are skipped); how many were deleted."""
        deleted = 0
        key = ctypes.c_uint64()
        with self._lock:
            if self._closed:
                return 0
            for cookie in cookies:
                key.value = cookie
                if self._lib.bpf_map_delete_elem(fd, ctypes.byref(key)) == 0:
                    deleted += 1
        return deleted

    # -- life cycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Detach every program and free the maps (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for link in self._links:
                self._lib.bpf_link__destroy(link)
            self._links = []
            self._lib.bpf_object__close(self._obj)

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
