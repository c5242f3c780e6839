"""Parse the CSV stream of macOS `nettop` logging mode into samples.

Pure: no I/O, no clock, no OS calls. The caller (darwin.py) reads nettop's
output and feeds it here line by line; tests feed recorded output
(tests/data/nettop/). Keeping it pure is what lets the parser be tested on
Linux, where there is no nettop.

The format, and where each assumption comes from
-------------------------------------------------
Sources: nettop(1) (macOS man page: `-L <samples>` logging mode, CSV, 0 =
forever; `-x` raw numbers; `-n` no name resolution; `-m tcp|udp|route`, and
"by default, nettop will monitor TCP and UDP sockets"), and captures of real
`nettop -L` output quoted in the tests of open-source projects that parse
it (Swift, Ruby, Rust, TypeScript and Python monitors on GitHub).

* Every sample starts with a header line. With the default columns it is::

      time,,interface,state,bytes_in,bytes_out,rx_dupe,rx_ooo,re-tx,rtt_avg,rcvsize,tx_win,tc_class,tc_mgt,cc_algo,P,C,R,W,arch,

  With `-J` the header carries only the chosen columns, has no `time`, and
  the label column comes first (`,interface,state,bytes_in,bytes_out,`).
  Column positions therefore come from the header, by name; the label
  column is the first column whose name is empty. Unknown columns are
  ignored, so new nettop versions may add columns freely.
  Lines ending with a comma leave an empty last field; that's expected.
* A process row, `<time>,<name>.<pid>,,,<bytes_in>,<bytes_out>,...`, is
  followed by the rows of that process's sockets. The name is truncated
  by nettop (to 15 characters in the captures: `Google Chrome H.1272`,
  `com.docker.back.13476`, `Microsoft Edge .772`), so it may end inside a
  word, end with a space, or contain dots: the pid is what follows the
  LAST dot. Trailing spaces left by the truncation are stripped.
* A socket row's label is `<transport> <local><-><remote>`. The transport is
  `tcp4`, `tcp6`, `udp4`, `udp6`, or on newer macOS `quic4`/`quic6` (QUIC
  flows, reported here as protocol "UDP", which carries them); `tcp46` is
  accepted for dual-stack sockets, as netstat prints it. IPv4 endpoints
  are `ip:port`; IPv6 endpoints put a DOT before the port
  (`fe80::1%lo0.631`, `2a00:1450:4007:80e::200e.443`), scope ids stay
  in the address as printed. `*` is "any" (`*:*`, `*.*`, `*:5353`,
  `*.22`) and becomes None. IPv4-mapped addresses are assumed to print as
  `::ffff:a.b.c.d.port`; that one hasn't been seen in a capture, and the
  endpoint parser works it out from the colon count, so it is safe either
  way. Bracketed `[v6]:port` and host names (output taken without `-n`)
  are accepted too.
* `state` is nettop's CamelCase TCP state. The NetworkStatistics framework
  that nettop is built on names eleven: Closed, Listen, SynSent,
  SynReceived, Established, CloseWait, FinWait1, Closing, LastAck,
  FinWait2, TimeWait (xnu's TCPS_* states, bsd/netinet/tcp_fsm.h, in that
  order). Captures show Established, Listen, CloseWait and FinWait2.
  Matching ignores case and punctuation ("FIN_WAIT_1" works too). They
  map to netmon's names (ESTABLISHED, LISTEN, SYN_SENT, ...). UDP rows
  have an empty state and get "NONE". A state that is none of these is
  kept as printed (a new macOS may add one): shown, never dropped; the
  raw text is also in `raw_state`.
* `bytes_in`/`bytes_out` are cumulative counters (no `-d`), raw numbers
  with `-x`. Listening sockets print them empty: that is "unknown" (None),
  not 0. On socket rows they are the socket's counters; on process rows
  they are the process's totals, which include sockets that have closed.
  Whether a socket's count starts when the socket was created or when
  nettop first saw it, the sources don't say outright; captures show
  first-sample counts far above one interval's worth (3,177,530 bytes on
  an apsd connection), which points to "since creation". Either way the
  count only grows while one nettop runs.
* Lines that fit none of this (blank lines excepted) are skipped and
  counted, and so are rows before the first header (the stream joined in
  the middle) and rows cut short. A damaged header (one with something
  other than column names in it) still ends the sample before it, but its
  rows are skipped: without a column map they can't be read.

Sample boundaries: a sample is complete when the next header arrives, or
when the caller says so with `flush()`: at EOF, or when the stream goes
quiet, because nettop prints each sample in one burst and then sleeps for
the interval. If rows still arrive after a quiet-time flush (nettop stalled
in the middle of a burst), they form a sample marked `continuation`, which
the caller merges into the one it already has (`NettopSample.merged`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

#: netmon state names for nettop's states. Keys are lower case with no
#: punctuation, so "FinWait1", "FIN_WAIT_1" and "fin-wait-1" all match.
_STATES: dict[str, str] = {
    "established": "ESTABLISHED",
    "listen": "LISTEN",
    "synsent": "SYN_SENT",
    "synreceived": "SYN_RECV",
    "synrcvd": "SYN_RECV",
    "synrecv": "SYN_RECV",
    "finwait1": "FIN_WAIT1",
    "finwait2": "FIN_WAIT2",
    "closewait": "CLOSE_WAIT",
    "lastack": "LAST_ACK",
    "closing": "CLOSING",
    "timewait": "TIME_WAIT",
    # xnu's TCPS_CLOSED; psutil calls it CLOSE. netmon keeps "CLOSED" for
    # connections it has seen go away, so it is not used here.
    "closed": "CLOSE",
    "close": "CLOSE",
}

_NON_ALNUM = re.compile(r"[^a-z0-9]")
# What a host name (output taken without -n) may look like; anything else
# in an address position means the line is damaged. It must have a letter:
# "10.0.0" is the front of an address with its tail cut off, not a name.
_HOSTNAME = re.compile(r"^(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_FLOW_SEPARATOR = "<->"
# What a column name looks like ("bytes_in", "re-tx", "P", ""). A header
# with anything else in it is damaged (e.g. glued to a cut-off row).
_COLUMN_NAME = re.compile(r"^[A-Za-z0-9_-]*$")


def map_state(raw: str | None) -> str:
    """netmon's name for a nettop TCP state; "NONE" when empty.

    A state that is none of the eleven is kept as nettop printed it, so
    that it shows (and can be reported) instead of vanishing into "NONE".
    """
    if not raw or not raw.strip():
        return "NONE"
    return _STATES.get(_NON_ALNUM.sub("", raw.lower()), raw.strip())


def is_header_line(line: str) -> bool:
    """True for a nettop CSV header line (has bytes_in and bytes_out)."""
    return _is_header(line.strip().split(","))


@dataclass(frozen=True, slots=True)
class NettopProcess:
    """A process row: nettop's (truncated) name, pid and the process's totals."""

    pid: int
    name: str
    bytes_in: int | None
    bytes_out: int | None


@dataclass(frozen=True, slots=True)
class NettopFlow:
    """A socket row, attributed to the process row above it."""

    protocol: str  # "TCP" | "UDP" (QUIC is "UDP")
    family: str  # "IPv4" | "IPv6"
    local_ip: str | None  # None for "*"
    local_port: int | None
    remote_ip: str | None
    remote_port: int | None
    state: str  # netmon name: "ESTABLISHED", ..., "NONE"
    interface: str | None
    bytes_in: int | None  # None where nettop printed nothing (listeners)
    bytes_out: int | None
    pid: int | None  # None if the row came before any process row
    process_name: str | None
    transport: str = ""  # as printed: "tcp4", "udp6", "quic4", ...
    raw_state: str | None = None  # nettop's own text, "" -> None
    retransmitted: int | None = None  # the "re-tx" column, where present
    duplicate_in: int | None = None  # the "rx_dupe" column, where present


@dataclass(frozen=True, slots=True)
class NettopSample:
    """Everything nettop printed for one sample."""

    flows: tuple[NettopFlow, ...] = ()
    processes: tuple[NettopProcess, ...] = ()
    # The time column of the first row ("HH:MM:SS.ffffff"; no date), if any.
    time: str | None = None
    # The caller's clock reading passed to feed() with the line that opened
    # this sample (the header): when nettop took it, give or take the pipe.
    received_at: float | None = None
    # Lines in this sample that could not be parsed.
    skipped: int = 0
    # True when the rows came without a header after a flush(): the tail
    # of the sample flushed before it, to be merged into that one.
    continuation: bool = False

    def merged(self, tail: NettopSample) -> NettopSample:
        """This sample with the rows of its continuation `tail` appended."""
        return NettopSample(
            flows=self.flows + tail.flows,
            processes=self.processes + tail.processes,
            time=self.time or tail.time,
            received_at=self.received_at,
            skipped=self.skipped + tail.skipped,
            continuation=self.continuation,
        )


@dataclass(frozen=True, slots=True)
class _Columns:
    """Where each field we use sits, found by name in a header line."""

    width: int
    label: int
    time: int | None
    interface: int | None
    state: int | None
    bytes_in: int
    bytes_out: int
    retransmitted: int | None
    duplicate_in: int | None

    @classmethod
    def from_header(cls, names: list[str]) -> _Columns | None:
        """The column map, or None for a header that can't be trusted."""
        if not all(_COLUMN_NAME.match(name.strip()) for name in names):
            return None
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            index.setdefault(name.strip().lower(), i)
        if "bytes_in" not in index or "bytes_out" not in index or "" not in index:
            return None
        return cls(
            width=len(names),
            label=index[""],
            time=index.get("time"),
            interface=index.get("interface"),
            state=index.get("state"),
            bytes_in=index["bytes_in"],
            bytes_out=index["bytes_out"],
            retransmitted=index.get("re-tx"),
            duplicate_in=index.get("rx_dupe"),
        )

    @property
    def needed(self) -> int:
        """Fields a row must have to carry the label and both counters."""
        return max(self.label, self.bytes_in, self.bytes_out) + 1


def _is_header(fields: list[str]) -> bool:
    names = {f.strip().lower() for f in fields}
    return "bytes_in" in names and "bytes_out" in names


def parse_counter(text: str) -> int | None:
    """A byte counter: int, or None where nettop printed nothing.

    Raises ValueError on anything else (e.g. "1.2 MiB" from a run without
    -x), because a guessed number would be worse than a skipped row.
    """
    text = text.strip()
    if text in ("", "-"):
        return None
    if not text.isdigit():
        raise ValueError(f"not a byte count: {text!r}")
    return int(text)


def _lenient_counter(text: str) -> int | None:
    try:
        return parse_counter(text)
    except ValueError:
        return None


def _port(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _host(text: str) -> str | None:
    """The address as printed (scope id kept), None for '*'.

    Validated, not normalised: Python < 3.13 would print an IPv4-mapped
    address as hex (::ffff:c0a8:105), unlike nettop and inet_ntop.
    """
    if text == "*":
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.match(text):
            raise ValueError(f"bad address {text!r}") from None
    return text


def parse_endpoint(text: str) -> tuple[str | None, int | None]:
    """Split one side of a socket label into (address, port).

    `192.168.1.5:50000`, `fe80::1%lo0.631`, `::ffff:10.0.0.7.22`, `*:*`,
    `*.22`, `[::1]:443`. Raises ValueError when it is none of these.
    """
    text = text.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise ValueError(f"bad endpoint {text!r}")
        port = rest[1:]
    elif text.count(":") >= 2:
        # IPv6: the port follows the last dot (nettop prints inet6 so).
        host, dot, port = text.rpartition(".")
        if not dot:
            raise ValueError(f"bad endpoint {text!r}")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    elif "." in text:
        # `*.22`, `*.*`, or an IPv4 address printed the inet6 way.
        host, _, port = text.rpartition(".")
    else:
        raise ValueError(f"bad endpoint {text!r}")
    if not host or not port:
        raise ValueError(f"bad endpoint {text!r}")
    return _host(host), _port(port)


def _family(versions: str, *hosts: str | None) -> str:
    """IPv4/IPv6 from the addresses; from the transport's digits for '*'."""
    for host in hosts:
        if host is None:
            continue
        try:
            return "IPv6" if ipaddress.ip_address(host).version == 6 else "IPv4"
        except ValueError:
            continue  # a host name says nothing
    # "tcp46" (dual stack) is an AF_INET6 socket.
    return "IPv6" if "6" in versions else "IPv4"


@dataclass(frozen=True, slots=True)
class _Label:
    """A socket row's label, 'tcp4 a:1<->b:2', taken apart."""

    transport: str  # "tcp4"
    protocol: str  # "TCP"
    versions: str  # "4", "6", "46" or ""
    local: str
    remote: str

    @classmethod
    def parse(cls, label: str) -> _Label:
        transport, space, endpoints = label.strip().partition(" ")
        local, sep, remote = endpoints.partition(_FLOW_SEPARATOR)
        if not space or not sep or _FLOW_SEPARATOR in remote:
            raise ValueError(f"bad socket label {label!r}")
        base = transport.lower().rstrip("0123456789")
        if base == "tcp":
            protocol = "TCP"
        elif base in ("udp", "quic"):
            protocol = "UDP"
        else:
            raise ValueError(f"unknown transport {transport!r}")
        return cls(transport, protocol, transport[len(base) :], local, remote)


class NettopParser:
    """Incremental parser: feed() lines, get completed samples back.

    Not thread-safe; one parser per nettop process (a new process prints a
    new header anyway).
    """

    def __init__(self) -> None:
        self._columns: _Columns | None = None
        # The sample being filled, as mutable parts until it is emitted.
        self._open = False
        self._continuation = False
        self._flows: list[NettopFlow] = []
        self._processes: list[NettopProcess] = []
        self._time: str | None = None
        self._received_at: float | None = None
        self._skipped = 0
        # The process that the next socket rows belong to. It survives a
        # flush(): a continuation's first rows belong to the last process.
        self._process: NettopProcess | None = None
        #: Lines skipped since the parser was made (garbage, cut-off rows,
        #: rows before the first header). Blank lines are not counted.
        self.skipped_lines = 0
        #: Samples returned so far (continuations included).
        self.samples_emitted = 0

    @property
    def pending(self) -> bool:
        """True when rows are waiting that flush() would emit."""
        return self._open and bool(self._flows or self._processes or self._skipped)

    def feed(self, line: str, at: float | None = None) -> list[NettopSample]:
        """Consume one line (with or without its line ending).

        Returns the samples this line completed: the previous one when
        `line` is a header, else nothing. `at` is the caller's clock,
        recorded as `received_at` of a sample this line opens.
        """
        text = line.strip()
        if not text:
            return []
        fields = text.split(",")
        if _is_header(fields):
            done = self._emit()
            columns = _Columns.from_header(fields)
            if columns is None:
                # A header we can't use: its sample is garbage, and so are
                # its rows (no column map) until a usable header arrives.
                self._columns = None
                self._count_skip()
                return done
            self._columns = columns
            self._begin(at, continuation=False)
            self._process = None
            return done
        if self._columns is None:
            self._count_skip()  # joined mid-stream: no column map yet
            return []
        if not self._open:
            self._begin(at, continuation=True)
        try:
            self._row(fields, self._columns)
        except ValueError:
            self._count_skip()
        return []

    def flush(self) -> list[NettopSample]:
        """Emit the sample being filled, if any: at EOF, or when the stream
        has gone quiet (the sample is then complete)."""
        return self._emit()

    # -- internals --------------------------------------------------------

    def _begin(self, at: float | None, continuation: bool) -> None:
        self._open = True
        self._continuation = continuation
        self._flows = []
        self._processes = []
        self._time = None
        self._received_at = at
        self._skipped = 0

    def _emit(self) -> list[NettopSample]:
        if not self._open:
            return []
        self._open = False
        self.samples_emitted += 1
        return [
            NettopSample(
                flows=tuple(self._flows),
                processes=tuple(self._processes),
                time=self._time,
                received_at=self._received_at,
                skipped=self._skipped,
                continuation=self._continuation,
            )
        ]

    def _count_skip(self) -> None:
        self.skipped_lines += 1
        if self._open:
            self._skipped += 1

    def _row(self, fields: list[str], cols: _Columns) -> None:
        """Parse one data row into the open sample; ValueError if damaged."""
        extra = len(fields) - cols.width
        label = fields[cols.label] if len(fields) > cols.label else ""
        if extra > 0 and _FLOW_SEPARATOR not in label:
            # More fields than the header: the process name contains commas.
            # Names are the only free text, so give the surplus back to it.
            label = ",".join(fields[cols.label : cols.label + extra + 1])
            fields = fields[: cols.label] + [label] + fields[cols.label + extra + 1 :]
        if len(fields) < cols.needed:
            raise ValueError("row cut short")
        bytes_in = parse_counter(fields[cols.bytes_in])
        bytes_out = parse_counter(fields[cols.bytes_out])
        if _FLOW_SEPARATOR in label:
            self._flows.append(self._flow(label, fields, cols, bytes_in, bytes_out))
        else:
            name, dot, pid = label.rpartition(".")
            name = name.rstrip()
            if not dot or not name or not pid.isdigit():
                raise ValueError(f"neither a process nor a socket: {label!r}")
            self._process = NettopProcess(int(pid), name, bytes_in, bytes_out)
            self._processes.append(self._process)
        if self._time is None and cols.time is not None:
            self._time = fields[cols.time].strip() or None

    def _flow(
        self,
        label: str,
        fields: list[str],
        cols: _Columns,
        bytes_in: int | None,
        bytes_out: int | None,
    ) -> NettopFlow:
        parts = _Label.parse(label)
        local_ip, local_port = parse_endpoint(parts.local)
        remote_ip, remote_port = parse_endpoint(parts.remote)

        def column(index: int | None) -> str | None:
            if index is None or index >= len(fields):
                return None
            return fields[index].strip() or None

        raw_state = column(cols.state)
        retx = column(cols.retransmitted)
        dupe = column(cols.duplicate_in)
        proc = self._process
        return NettopFlow(
            protocol=parts.protocol,
            family=_family(parts.versions, local_ip, remote_ip),
            local_ip=local_ip,
            local_port=local_port,
            remote_ip=remote_ip,
            remote_port=remote_port,
            state=map_state(raw_state) if parts.protocol == "TCP" else "NONE",
            interface=column(cols.interface),
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            pid=proc.pid if proc else None,
            process_name=proc.name if proc else None,
            transport=parts.transport,
            raw_state=raw_state,
            retransmitted=_lenient_counter(retx) if retx else None,
            duplicate_in=_lenient_counter(dupe) if dupe else None,
        )


def parse_text(text: str) -> list[NettopSample]:
    """Parse a whole recording; the last sample is flushed at the end.

    Splits on "\\n" only (not str.splitlines, which would also split on
    characters a process name may legally contain); "\\r" is stripped.
    """
    parser = NettopParser()
    samples: list[NettopSample] = []
    for line in text.split("\n"):
        samples += parser.feed(line)
    samples += parser.flush()
    return samples
