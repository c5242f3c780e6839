"""Peer processes for the eBPF tests, each with its own process name (PR_SET_NAME).

    python tests/ebpf_peers.py tcp-server NAME CONNECTIONS REPLY_BYTES
        listens on 127.0.0.1 (prints {"port": P}), accepts CONNECTIONS one by
        one, reads each request (a 4-byte length, then that many bytes),
        replies REPLY_BYTES and closes; prints {"cookies": [...]} of the
        accepted sockets at the end.
    python tests/ebpf_peers.py tcp-client NAME PORT CONNECTIONS REQUEST_BYTES REPLY_BYTES
        makes CONNECTIONS one after another, each sending REQUEST_BYTES (after
        their 4-byte length) and
        reading REPLY_BYTES, then closing; prints {"cookies": [...]}.
    python tests/ebpf_peers.py udp NAME FAMILY CONNECTED DATAGRAMS SIZE
        sends DATAGRAMS of SIZE bytes to a receiving socket of its own (IPv4 or
        IPv6, connect()ed or sendto()), reads them all, prints the cookies of
        both sockets, then waits for a line on stdin before closing them.

Every socket's cookie is SO_COOKIE, the id the kernel also gives sock_diag.
"""

from __future__ import annotations

import ctypes
import json
import socket
import struct
import sys

SO_COOKIE = 57
PR_SET_NAME = 15


def set_name(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def cookie(sock: socket.socket) -> int:
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def read_exactly(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        data = sock.recv(min(1 << 16, n - got))
        if not data:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += len(data)


def tcp_server(connections: int, reply: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.settimeout(60)
    say({"port": listener.getsockname()[1]})
    cookies = []
    payload = b"r" * reply
    for _ in range(connections):
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            cookies.append(cookie(conn))
            request = struct.unpack("=I", _recv_exact(conn, 4))[0]
            read_exactly(conn, request)
            conn.sendall(payload)
    listener.close()
    say({"cookies": cookies})


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise ConnectionError("peer closed")
        data += piece
    return data


def tcp_client(port: int, connections: int, request: int, reply: int) -> None:
    cookies = []
    payload = b"q" * request
    for _ in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            cookies.append(cookie(conn))
            conn.sendall(struct.pack("=I", request) + payload)
            read_exactly(conn, reply)
    say({"cookies": cookies})


def udp(family_name: str, connected: bool, datagrams: int, size: int) -> None:
    family, host = (socket.AF_INET6, "::1") if family_name == "IPv6" else (socket.AF_INET, "127.0.0.1")
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.settimeout(10)
    sender = socket.socket(family, socket.SOCK_DGRAM)
    target = receiver.getsockname()[:2]
    if connected:
        sender.connect(target)
    payload = b"u" * size
    for _ in range(datagrams):
        if connected:
            sender.send(payload)
        else:
            sender.sendto(payload, target)
        receiver.recv(size + 1)  # one at a time: nothing dropped for a full buffer
    say({"sender": cookie(sender), "receiver": cookie(receiver),
         "sender_port": sender.getsockname()[1], "receiver_port": target[1]})
    sys.stdin.readline()
    sender.close()
    receiver.close()
    say({"closed": True})


def main(argv: list[str]) -> None:
    mode, name, *args = argv
    set_name(name)
    if mode == "tcp-server":
        tcp_server(int(args[0]), int(args[1]))
    elif mode == "tcp-client":
        tcp_client(int(args[0]), int(args[1]), int(args[2]), int(args[3]))
    elif mode == "udp":
        udp(args[0], args[1] == "connected", int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
