#!/usr/bin/env python3
"""Connection churn on a busy machine: are short-lived connections' bytes counted?

    python bench/churn.py [--rate 2000] [--seconds 60] [--held 10000] [--hogs 2]
                          [--size small|large] [--quick]

In a network namespace of its own (so that nothing else on the machine adds
sockets or bytes), with --held loopback sockets held open and --hogs
processes burning a core each, a real `netmond` (1 s interval) watches a
churner open, use and close --rate connections a second for --seconds (each
carries 1,000 bytes client to server, then both ends close: most live far
less than one interval, so only the kernel's destroy events tell netmond
about them). Beside it, the peer: a Python process polling
psutil.net_connections("inet") every second, which sees a connection only
if one of its polls falls inside the connection's life.

Reported: connections made and the rate achieved (under the hogs it may be
less than asked), destroy events the kernel dropped (netmond's status
`events_lost`), bytes the churner moved against the bytes netmond counted
(socket_bytes_sent / socket_bytes_received of `stats`: the held sockets
moved nothing once netmond started), the share missing, and how many of
the connections each tool saw (netmond: client ends a `connection_closed`
subscriber, as `netmonctl watch`, was told of with their 1,000 bytes;
psutil: distinct client ends it saw open). Target: 0 events lost, or every loss
counted and its bytes recovered. Needs root (a namespace); n/a otherwise.
--size small (and --quick) runs 10 s instead of 60.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    CHURN_ADDR, Churn, Daemon, Hog, Holder, StatusProbe, Usage, machine_line, mb, ms, popen, raise_fd_limit, ratio, table,
)

# Polls every second for `seconds`; prints the distinct connections to the
# churner's listeners (on CHURN_ADDR) it saw open (client ends, not yet in
# TIME_WAIT), and its polls.
_PSUTIL_LOOP = """
import sys, time, psutil
seconds, addr = float(sys.argv[1]), sys.argv[2]
t0 = next_at = time.monotonic()
seen = set()
polls = 0
while time.monotonic() - t0 < seconds:
    for c in psutil.net_connections("inet"):
        if c.raddr and c.raddr.ip == addr and c.status != "TIME_WAIT":
            seen.add((c.laddr, c.raddr))
    polls += 1
    next_at += 1.0
    time.sleep(max(0.0, next_at - time.monotonic()))
print(len(seen), polls, flush=True)
"""


class ClosedWatcher:
    """A subscriber to `connection_closed` rows on CHURN_ADDR (as `netmonctl
    watch` would be): the connections netmond reported closed with all
    their bytes (client ends that sent `nbytes`)."""

    def __init__(self, socket_path: str, nbytes: int) -> None:
        from common.client import Client

        self.nbytes = nbytes
        self.client = Client.connect(socket_path, timeout=60)
        self.client.subscribe(["connection_closed"], {"ip": CHURN_ADDR})
        self.seen = 0
        self.lagged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            note = self.client.next_notification(timeout=0.5)
            if note is None:
                continue
            if note.method == "lagged":
                self.lagged += note.payload.get("missed", 0)
                continue
            for row in note.payload.get("connections", []):
                if row.get("remote_ip") == CHURN_ADDR and row.get("bytes_sent") == self.nbytes:
                    self.seen += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


NBYTES = 1000  # client to server, per connection


def inside(args: argparse.Namespace) -> None:
    """The measurement, run inside the namespace."""
    from common.client import Client

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with Holder(args.held), Daemon(1.0) as daemon, Hog(args.hogs):
        daemon.wait_ticks(3, timeout=180)
        with Client.connect(daemon.socket, timeout=60) as c:
            before = c.call("stats")
            lost_before = c.call("status")["events_lost"]
        watcher = ClosedWatcher(daemon.socket, NBYTES)
        peer = popen([sys.executable, "-c", _PSUTIL_LOOP, str(args.seconds), CHURN_ADDR],
                     stdout=subprocess.PIPE, text=True)
        try:
            with StatusProbe(daemon.socket, every=0.5) as probe, Churn(args.rate, args.seconds, NBYTES) as churn:
                usage = Usage({"netmond": daemon.pid, "psutil loop": peer.pid})
                usage.run(args.seconds)
                churn.wait(args.seconds * 3 + 60)
            out, _ = peer.communicate(timeout=args.seconds * 3 + 60)
        finally:
            if peer.poll() is None:
                peer.kill()
                peer.wait()
        ticks = probe.replies[-1]["ticks"] if probe.replies else 0
        daemon.wait_ticks(ticks + 3, timeout=120)  # the last closes are folded in
        with Client.connect(daemon.socket, timeout=60) as c:
            after = c.call("stats")
            status = c.call("status")
        watcher.stop()
    try:
        peer_seen = int(out.split()[0])
    except (ValueError, IndexError):
        peer_seen = None
    lost = status["events_lost"] - lost_before
    truth = churn.bytes_moved
    sent = after["socket_bytes_sent"] - before["socket_bytes_sent"]
    received = after["socket_bytes_received"] - before["socket_bytes_received"]

    def missing(counted: int) -> str:
        return f"{truth - counted} ({100 * (truth - counted) / truth:.2f} %)" if truth else "-"

    print(f"\nchurner: {churn.connections} connections in {args.seconds:g} s ({churn.rate:.0f}/s achieved, "
          f"{args.rate:g}/s asked), {truth} bytes each way; {args.held} sockets held, {args.hogs} CPU hogs")
    ours_cpu, peer_cpu = usage.cpu_percent["netmond"], usage.cpu_percent["psutil loop"]
    table(
        "Churn with CPU hogs (own network namespace)",
        ("process", "destroy events lost", "bytes sent missing", "bytes received missing",
         "connections seen", "status p99 ms", "cpu % of 1 core", "peak RSS MB", "ours/it cpu"),
        [
            ("netmond", lost, missing(sent), missing(received),
             f"{watcher.seen} of {churn.connections}"
             + (f" ({watcher.lagged} updates lagged)" if watcher.lagged else ""),
             ms(probe.percentile(99)), f"{ours_cpu:.1f}", mb(usage.peak_rss["netmond"]), ""),
            ("psutil loop", "", "no bytes", "no bytes",
             f"{peer_seen} of {churn.connections}" if peer_seen is not None else "-", "",
             f"{peer_cpu:.1f}", mb(usage.peak_rss["psutil loop"]), ratio(ours_cpu, peer_cpu)),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="connections a second")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--held", type=int, default=10000, help="sockets held open meanwhile")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="processes burning a core")
    parser.add_argument("--size", choices=("small", "large"), default="large",
                        help="small: a 10 s run; large: 60 s")
    parser.add_argument("--quick", action="store_true", help="200/s for 3 s, 100 held: a smoke run")
    parser.add_argument("--inside", metavar="NETNS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 10.0 if args.size == "small" else 60.0
    if args.quick:
        args.rate, args.seconds, args.held, args.hogs = 200.0, 3.0, 100, 1
    raise_fd_limit()
    if args.inside:
        inside(args)
        return
    print(f"# churn: {machine_line()}")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("\nChurn with CPU hogs: n/a (needs root and iproute2's ip for a network namespace)")
        return
    netns = f"nmbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        argv = [sys.executable, os.path.abspath(__file__), "--inside", netns, "--rate", str(args.rate),
                "--seconds", str(args.seconds), "--held", str(args.held), "--hogs", str(args.hogs)]
        proc = popen(["ip", "netns", "exec", netns, *argv])
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        if rc != 0:
            sys.exit(rc)
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)


if __name__ == "__main__":
    main()
