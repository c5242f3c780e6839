#!/usr/bin/env python3
"""What Linux root mode (eBPF) costs: each figure with the programs attached and without.

    python bench/ebpf.py [--sockets 10000] [--rate 5000] [--seconds 10] [--runs 7]
                         [--only tick connections udp iperf3] [--quick]

    tick          LinuxBackend.sample() + MonitorState.apply() at N TCP sockets,
                  root mode on (the backend attached its programs before the
                  sockets were opened, so both maps hold an entry per socket and
                  each tick reads them) and off (--no-ebpf)
    connections   a process opening and closing RATE loopback connections a
                  second (100 bytes each way, server closes first) for S
                  seconds beside a real netmond at a 1 s interval: the churn
                  process's CPU per connection (the kernel runs the hooks on
                  its time) and the daemon's CPU %, root mode on and off
    udp           CPU per 1,400-byte loopback datagram sent and received
                  (both hooks), with the programs attached and without
    iperf3        loopback throughput, TCP and UDP (1,400-byte datagrams, no
                  rate limit), with the programs attached and without, runs
                  interleaved

Needs root (or CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN), libbpf.so.1, cgroup v2 and
the built object (`make`); otherwise it says why and exits 0. iperf3 is the
Debian package of that name (skipped when missing). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Daemon, Holder, Usage, machine_line, max_sockets, popen, raise_fd_limit, table  # noqa: E402

from netmond.backends.ebpf import loader  # noqa: E402
from netmond.backends.linux import LinuxBackend  # noqa: E402
from netmond.state import MonitorState  # noqa: E402
from tick import measure_in_process  # noqa: E402


# -- tick ------------------------------------------------------------------------------------------
def tick_cost(sockets: int, runs: int, ebpf: bool) -> tuple[int, float, float]:
    """(rows, median cpu s, median wall s) of one tick with root mode on or off."""
    backend = LinuxBackend(ebpf=ebpf)
    state = MonitorState()
    try:
        backend.start()  # before the sockets exist: the programs see them created
        if ebpf and not backend.status().root_mode["active"]:
            raise SystemExit(f"root mode did not start: {backend.status().root_mode['reason']}")
        with Holder(sockets):
            state.apply(backend.sample())
            wall, cpu = measure_in_process(lambda: state.apply(backend.sample()), runs)
            return len(state.open), cpu, wall
    finally:
        backend.close()


# -- connections -------------------------------------------------------------------------------------
def _churn(rate: float, seconds: float) -> None:  # pragma: no cover - runs in the child
    """Open/close `rate` loopback connections a second for `seconds`; print count and own CPU."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    addr = listener.getsockname()
    payload = b"c" * 100
    print("ready", flush=True)
    sys.stdin.readline()
    count = 0
    c0, t0 = time.process_time(), time.monotonic()
    while True:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        ahead = count / rate - now
        if ahead > 0:
            time.sleep(ahead)
        client = socket.create_connection(addr)
        server, _ = listener.accept()
        client.sendall(payload)
        server.recv(100)
        server.sendall(payload)
        server.close()  # the server closes first: its side keeps the TIME_WAIT, no client port is held
        client.recv(100)
        client.recv(100)  # EOF
        client.close()
        count += 1
    print(count, time.process_time() - c0, time.monotonic() - t0, flush=True)


def connection_cost(rate: float, seconds: float, ebpf: bool) -> tuple[float, float, float]:
    """(achieved conn/s, churn CPU µs per connection, daemon CPU %) beside a netmond."""
    extra = () if ebpf else ("--no-ebpf",)
    with Daemon(1.0, "--backend", "linux", *extra) as daemon:
        churn = popen([sys.executable, os.path.abspath(__file__), "churn", str(rate), str(seconds)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert churn.stdout.readline().strip() == "ready"
            usage = Usage({"netmond": daemon.pid})
            watcher = threading.Thread(target=usage.run, args=(seconds,))
            churn.stdin.write("go\n")
            churn.stdin.flush()
            watcher.start()
            count, cpu, elapsed = churn.stdout.readline().split()
            watcher.join()
        finally:
            churn.kill()
            churn.wait()
    count = int(count)
    return count / float(elapsed), float(cpu) / count * 1e6, usage.cpu_percent["netmond"]


# -- UDP datagrams ---------------------------------------------------------------------------------
def datagram_cost(datagrams: int) -> float:
    """CPU µs per 1,400-byte loopback datagram sent and received by this process.

    On loopback the receive path (and so the ingress program) runs on the
    sender's time too: one process measures both hooks.
    """
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    data = b"x" * 1400
    try:
        c0 = time.process_time()
        for i in range(datagrams):
            sender.send(data)
            if i % 64 == 63:
                try:
                    while True:
                        receiver.recv(2048)
                except BlockingIOError:
                    pass
        return (time.process_time() - c0) / datagrams * 1e6
    finally:
        sender.close()
        receiver.close()


def datagram_costs(datagrams: int, rounds: int) -> tuple[float, float]:
    """Median µs per datagram without and with the programs, interleaved."""
    off, on = [], []
    for _ in range(rounds):
        off.append(datagram_cost(datagrams))
        with loader.Probe.open():
            on.append(datagram_cost(datagrams))
    return statistics.median(off), statistics.median(on)


# -- iperf3 --------------------------------------------------------------------------------------------
def iperf3(udp: bool, seconds: int) -> float | None:
    """Loopback throughput in Gbit/s (UDP: received), or None without iperf3."""
    import shutil

    if not shutil.which("iperf3"):
        return None
    port = _free_port()
    server = popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
        if udp:
            argv += ["-u", "-b", "0", "-l", "1400"]
        out = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout)
        end = out["end"]
        bits = end["sum"]["bits_per_second"] if udp else end["sum_received"]["bits_per_second"]
        if udp:
            bits *= 1 - end["sum"].get("lost_percent", 0) / 100
        return bits / 1e9
    finally:
        server.kill()
        server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throughput(seconds: int, rounds: int) -> list[tuple[str, float | None, float | None]]:
    """Median Gbit/s without and with the programs, runs interleaved (the load of a shared machine moves)."""
    runs: dict[tuple[bool, bool], list[float]] = {(udp, on): [] for udp in (False, True) for on in (False, True)}
    for _ in range(rounds):
        for udp in (False, True):
            runs[udp, False].append(iperf3(udp, seconds))
            with loader.Probe.open():
                runs[udp, True].append(iperf3(udp, seconds))

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return [(name, median(runs[udp, False]), median(runs[udp, True]))
            for name, udp in (("TCP", False), ("UDP, 1400-byte datagrams", True))]


PARTS = ("tick", "connections", "udp", "iperf3")


def _pct(on: float | None, off: float | None) -> str:
    return "-" if on is None or off is None or off == 0 else f"{(on / off - 1) * 100:+.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="small and short, no iperf3: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.rate, args.seconds, args.runs = 100, 200, 1, 2
        args.only = [part for part in args.only if part != "iperf3"]
    print(f"# ebpf: {machine_line()}")
    reason = loader.unavailable_reason()
    if reason:
        print(f"\nroot mode unavailable here: {reason}")
        return
    raise_fd_limit()
    if "tick" in args.only:
        sockets = min(args.sockets, max_sockets())
        results = {mode: tick_cost(sockets, args.runs, mode == "on") for mode in ("off", "on")}
        rows = []
        for mode in ("off", "on"):
            listed, cpu, wall = results[mode]
            rows.append((f"root mode {mode}", listed, f"{cpu * 1000:.1f}", f"{wall * 1000:.1f}",
                         "" if mode == "off" else f"{(cpu - results['off'][1]) * 1000:+.1f}"))
        table(f"Tick cost, {sockets} TCP sockets held (median of {args.runs})",
              ("netmond tick", "listed", "cpu ms", "wall ms", "eBPF adds ms"), rows)
    if "connections" in args.only:
        churn = {mode: connection_cost(args.rate, args.seconds, mode == "on") for mode in ("off", "on")}
        rows = [(f"root mode {mode}", f"{rate:.0f}", f"{per:.1f}", f"{daemon:.1f}")
                for mode, (rate, per, daemon) in churn.items()]
        table(f"Connections at up to {args.rate:.0f}/s for {args.seconds:g} s, beside netmond (1 s interval)",
              ("mode", "conn/s made", "churn cpu us/conn", "netmond cpu %"), rows)
        print(f"root mode adds {churn['on'][1] - churn['off'][1]:+.1f} us of CPU per connection to the process "
              f"making it, and {churn['on'][2] - churn['off'][2]:+.1f} points to the daemon")
    if "udp" in args.only:
        off, on = datagram_costs(2000 if args.quick else 200_000, 1 if args.quick else 3)
        table("UDP, 1,400-byte loopback datagrams sent and received by one process (median of 3 interleaved)",
              ("programs", "cpu us/datagram"), [("detached", f"{off:.2f}"), ("attached", f"{on:.2f}"),
                                                ("eBPF adds", f"{on - off:+.2f}")])
    if "iperf3" in args.only:
        rows = [(name, "-" if off is None else f"{off:.2f}", "-" if on is None else f"{on:.2f}", _pct(on, off))
                for name, off, on in throughput(3, 3)]
        table("iperf3 over loopback, 3 s runs, median of 3 interleaved (Gbit/s)",
              ("transfer", "programs detached", "attached", "change"), rows)


if __name__ == "__main__":
    if sys.argv[1:2] == ["churn"]:
        _churn(float(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
