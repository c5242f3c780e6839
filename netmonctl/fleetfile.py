"""The fleet's two files: hosts.toml (what the user wrote) and fleet.json (what we saw).

~/.config/netmon/hosts.toml ($XDG_CONFIG_HOME honoured), read with tomllib:

    [hosts.nas]
    url = "ssh://admin@nas.lan"             # or unix:///run/netmond.sock
    tags = ["home"]

    [hosts.web1]
    url = "ssh://deploy@web1.example.com:2222/run/netmond.sock"
    remote_command = "/opt/netmon/bin/netmonctl"   # when not on the remote PATH
    socket = "/run/netmond.sock"                   # overrides the URL's path
    ssh_options = ["-i", "~/.ssh/netmon_ed25519"]  # extra ssh arguments

`fleet add` appends a table and `fleet rm` cuts one out, so comments and
layout elsewhere in the file survive; both re-read the result and compare it
with what was meant before replacing the file (atomically).

~/.local/state/netmon/fleet.json ($XDG_STATE_HOME honoured): per host, when
it was last seen online, kept across runs. Writes merge with what is on disk
(the newest time wins), so two `fleet --watch` do not erase each other.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from common import paths
from common.atomicfile import write_atomically
from common.errors import UsageProblem

from .targets import NAME_RE, Target, TargetError, parse_url

#: Keys a hosts.toml entry may have.
ENTRY_KEYS = ("url", "socket", "remote_command", "tags", "ssh_options")


class FleetFileError(UsageProblem):
    """hosts.toml cannot be used as it is; the message names the file and the entry."""


@dataclass(frozen=True)
class HostEntry:
    """One named host of hosts.toml."""

    name: str
    url: str
    socket: str | None = None
    remote_command: str | None = None
    tags: tuple[str, ...] = ()
    ssh_options: tuple[str, ...] = field(default_factory=tuple)

    def target(self) -> Target:
        """Where this host's daemon is (validated when the file was loaded)."""
        return parse_url(
            self.url,
            name=self.name,
            socket_path=self.socket,
            remote_command=self.remote_command,
            ssh_options=self.ssh_options,
        )

    def to_json(self) -> dict[str, Any]:
        """The entry as `fleet ls --json` prints it."""
        return {
            "name": self.name,
            "url": self.url,
            "socket": self.socket,
            "remote_command": self.remote_command,
            "tags": list(self.tags),
            "ssh_options": list(self.ssh_options),
        }


# -- where ---------------------------------------------------------------------


def hosts_path() -> str:
    """~/.config/netmon/hosts.toml, or under $XDG_CONFIG_HOME."""
    return os.path.join(paths.config_dir(), "hosts.toml")


def state_path() -> str:
    """~/.local/state/netmon/fleet.json, or under $XDG_STATE_HOME."""
    return os.path.join(paths.state_dir(), "fleet.json")


# -- hosts.toml ------------------------------------------------------------------


def resolve(value: str) -> Target:
    """The Target a `-H` value names: a URL, or a host name from hosts.toml."""
    value = value.strip()
    if "://" in value:
        return parse_url(value)
    if not NAME_RE.match(value):
        raise TargetError(
            f"{value!r}: expected ssh://[user@]host[:port][/socket], unix:///path, "
            "or a host name from hosts.toml"
        )
    try:
        hosts = load_hosts()
    except FleetFileError as exc:  # unreadable or invalid hosts.toml
        raise TargetError(str(exc)) from None
    entry = hosts.get(value)
    if entry is None:
        raise TargetError(
            f"unknown host {value!r}: not in {hosts_path()} "
            f"(add it with: netmonctl fleet add {value} ssh://[user@]host)"
        )
    return entry.target()


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FleetFileError(f"{where} must be a list of strings")
    return tuple(value)


def entry_from_table(name: str, table: Any, where: str = "") -> HostEntry:
    """Validate one `[hosts.NAME]` table."""
    where = where or f"hosts.{name}"
    if not NAME_RE.match(name):
        raise FleetFileError(f"{where}: host names are letters, digits, '.', '_' and '-' (got {name!r})")
    if not isinstance(table, dict):
        raise FleetFileError(f"{where} must be a table")
    unknown = [k for k in table if k not in ENTRY_KEYS]
    if unknown:
        raise FleetFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(ENTRY_KEYS)})")
    url = table.get("url")
    if not isinstance(url, str):
        raise FleetFileError(f"{where}: url is required (ssh://[user@]host[:port][/socket] or unix:///path)")
    for key in ("socket", "remote_command"):
        if table.get(key) is not None and not isinstance(table[key], str):
            raise FleetFileError(f"{where}.{key} must be a string")
    entry = HostEntry(
        name=name,
        url=url,
        socket=table.get("socket"),
        remote_command=table.get("remote_command"),
        tags=_strings(table.get("tags", []), f"{where}.tags"),
        ssh_options=_strings(table.get("ssh_options", []), f"{where}.ssh_options"),
    )
    try:
        entry.target()
    except TargetError as exc:
        raise FleetFileError(f"{where}: {exc}") from None
    return entry


def parse_hosts(text: str, path: str = "hosts.toml") -> dict[str, HostEntry]:
    """Entries of a hosts.toml text, in file order."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetFileError(f"{path}: invalid TOML: {exc}") from None
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise FleetFileError(f"{path}: `hosts` must be a table of [hosts.NAME] tables")
    return {name: entry_from_table(name, table, f"{path}: hosts.{name}") for name, table in hosts.items()}


def load_hosts(path: str | None = None) -> dict[str, HostEntry]:
    """The user's hosts; an absent file is an empty fleet."""
    path = path or hosts_path()
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise FleetFileError(f"{path}: {exc.strerror}") from None
    return parse_hosts(text, path)


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=False)


def entry_to_toml(entry: HostEntry) -> str:
    """One `[hosts."NAME"]` table, as `fleet add` appends it."""
    lines = [f"[hosts.{_toml_string(entry.name)}]", f"url = {_toml_string(entry.url)}"]
    for key in ("socket", "remote_command"):
        value = getattr(entry, key)
        if value is not None:
            lines.append(f"{key} = {_toml_string(value)}")
    for key in ("tags", "ssh_options"):
        values = getattr(entry, key)
        if values:
            lines.append(f"{key} = [{', '.join(_toml_string(v) for v in values)}]")
    return "\n".join(lines) + "\n"


def _write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    """Write `text` atomically and durably, creating its directory (0700) if needed."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomically(path, text.encode("utf-8"), mode, durable=True)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def add_host(entry: HostEntry, path: str | None = None) -> None:
    """Append `entry` to hosts.toml; FleetFileError if the name is taken."""
    path = path or hosts_path()
    text = _read_text(path)
    before = parse_hosts(text, path)
    if entry.name in before:
        raise FleetFileError(f"host {entry.name!r} already exists in {path} (fleet rm {entry.name} first)")
    new = (text.rstrip("\n") + "\n\n" if text.strip() else "") + entry_to_toml(entry)
    if parse_hosts(new, path) != {**before, entry.name: entry}:
        # The file's own layout (e.g. an inline `hosts = {...}`) does not take
        # an appended table; say so rather than write something else.
        raise FleetFileError(f"{path}: cannot append to this file's layout; add [hosts.{entry.name}] by hand")
    _write_atomic(path, new, _mode_of(path))


_HEADER = re.compile(r"^\s*\[\[?\s*(.*?)\s*\]\]?\s*(#.*)?$")


def _without_table(text: str, name: str) -> str:
    """`text` with the `[hosts.NAME]` table's lines cut out (up to the next header)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            try:
                key = tomllib.loads(f"[{header.group(1)}]\n")
            except tomllib.TOMLDecodeError:
                key = {}
            skipping = list(key.get("hosts", {})) == [name] and list(key) == ["hosts"]
        if not skipping:
            out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "".join(out))


def remove_host(name: str, path: str | None = None) -> None:
    """Delete the entry `name` from hosts.toml; FleetFileError if absent."""
    path = path or hosts_path()
    text = _read_text(path)
    before = parse_hosts(text, path)
    if name not in before:
        raise FleetFileError(f"no host {name!r} in {path}")
    expected = {k: v for k, v in before.items() if k != name}
    new = _without_table(text, name)
    try:
        ok = parse_hosts(new, path) == expected
    except FleetFileError:
        ok = False
    if not ok:
        # Not our own layout: rewrite the file from its entries (comments go).
        new = "\n".join(entry_to_toml(e) for e in expected.values())
    _write_atomic(path, new, _mode_of(path))


def _mode_of(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o600


# -- fleet.json --------------------------------------------------------------------


#: Largest fleet.json read: ~10,000 hosts. A bigger one is ignored (and
#: rewritten from hosts.toml's hosts at the next save) rather than parsed.
MAX_STATE_BYTES = 1024 * 1024


def _warn(message: str) -> None:
    import click

    click.echo(f"netmonctl: warning: {message}", err=True)


def load_state(path: str | None = None) -> dict[str, dict[str, Any]]:
    """{host name: {"last_seen": unix seconds}}; unreadable or absent -> {}.

    Validated on read, since anything may have written the file: one that is
    too large, not JSON or nested too deep is ignored; entries that are not
    {"last_seen": number} are dropped. Either way with a warning, and the
    next save writes a clean file. Before, `"last_seen": "yesterday"` or
    JSON nested 100,000 deep crashed every `netmonctl fleet` until the file
    was fixed by hand.
    """
    path = path or state_path()
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_STATE_BYTES + 1)
    except OSError:
        return {}  # a lost state file only costs the "last seen" column
    if len(raw) > MAX_STATE_BYTES:
        _warn(f"{path} is larger than {MAX_STATE_BYTES // 1024} KiB; ignored (rewritten at the next save)")
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        _warn(f"{path} is not valid JSON; ignored (rewritten at the next save)")
        return {}
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict):
        if raw.strip():
            _warn(f"{path} has no \"hosts\" map; ignored (rewritten at the next save)")
        return {}
    out: dict[str, dict[str, Any]] = {}
    bad = 0
    for name, info in hosts.items():
        seen = info.get("last_seen") if isinstance(info, dict) else "bad"
        if seen is not None and (isinstance(seen, bool) or not isinstance(seen, (int, float))
                                 or not math.isfinite(seen) or seen < 0):
            bad += 1
            continue
        out[name] = {} if seen is None else {"last_seen": seen}
    if bad:
        _warn(f"{path}: {bad} bad entr{'y' if bad == 1 else 'ies'} dropped (last_seen must be unix seconds)")
    return out


def save_state(seen: dict[str, dict[str, Any]], path: str | None = None) -> None:
    """Merge `seen` into fleet.json (latest last_seen wins) and write it atomically.

    Hosts no longer in hosts.toml are pruned (when hosts.toml can be read),
    so the file never grows past the hosts the user has.
    """
    path = path or state_path()
    merged = load_state(path)
    for name, info in seen.items():
        old = merged.get(name, {})
        if (old.get("last_seen") or 0) > (info.get("last_seen") or 0):
            info = {**info, "last_seen": old["last_seen"]}
        merged[name] = {**old, **info}
    try:
        known = set(load_hosts())
    except (FleetFileError, OSError):
        known = None
    if known:  # no hosts.toml (or an empty one): nothing to prune against
        merged = {k: v for k, v in merged.items() if k in known or k in seen}
    _write_atomic(path, json.dumps({"hosts": merged}, indent=2, sort_keys=True) + "\n")


def forget_state(name: str, path: str | None = None) -> None:
    """Drop a removed host from fleet.json (a new host of that name starts unseen)."""
    path = path or state_path()
    state = load_state(path)
    if state.pop(name, None) is not None:
        _write_atomic(path, json.dumps({"hosts": state}, indent=2, sort_keys=True) + "\n")
