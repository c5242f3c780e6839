"""netmond configuration: a dataclass, TOML loading and validation.

Precedence: built-in defaults < TOML file < command-line flags. Every value is
validated with a message that names the key and says what is allowed, so a
typo in a config file stops the daemon with a clear line instead of a
traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass
from typing import Any

from common import api, paths

BACKENDS = ("auto", "linux", "darwin", "portable")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration value is invalid; the message is meant for the user."""


@dataclass
class Config:
    """Everything netmond needs to run. Field names are the TOML keys."""

    socket: str = ""  # empty: paths.default_daemon_socket()
    interval: float = 1.0
    history_seconds: int = 3600
    closed_retention: float = 60.0
    # One loopback policy for every view (see state.py): monitored by default.
    include_loopback: bool = True
    backend: str = "auto"
    log_level: str = "info"
    # Group allowed to connect and control a root daemon (socket 0660 root:group).
    socket_group: str | None = None
    # Concurrent clients; further ones are answered too_many_clients. The
    # server lowers it to what the descriptor limit allows (macOS: 256).
    max_clients: int = 128
    # A client that sends nothing for this long and has no subscription is dropped.
    client_idle_timeout: float = 300.0
    # Notifications queued per subscriber before it is marked lagged.
    subscriber_queue: int = 256
    metrics_listen: str | None = None
    metrics_textfile: str | None = None
    # Linux root mode: eBPF attribution and UDP counters when allowed (false: never).
    ebpf: bool = True
    # Name remote addresses (reverse DNS: queries go to the configured DNS
    # server; loopback and link-local from the hosts file only). false: never.
    resolve: bool = True
    # Usage over days (netmond/usage): where the store lives, empty: the
    # default (paths.default_data_dir); whether to keep it at all; how long.
    data_dir: str = ""
    store_usage: bool = True
    usage_retention_days: int = 400
    # Seconds between writes of the counted bytes (at most 10: a kill -9
    # loses at most this much).
    usage_write_interval: float = 10.0

    def socket_path(self) -> str:
        """The socket path to bind."""
        return self.socket or paths.default_daemon_socket()

    def data_path(self) -> str:
        """The directory of the usage store."""
        return os.path.abspath(self.data_dir) if self.data_dir else paths.default_data_dir()


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


#: Largest config file read (a real one is a few hundred bytes).
MAX_CONFIG_BYTES = 1024 * 1024


def load_file(path: str) -> dict[str, Any]:
    """Read a TOML file into a dict of config keys (validated later).

    Every failure is a ConfigError that names the file, at start and at
    SIGHUP alike. Opened non-blocking and checked to be a regular file before
    reading: a FIFO at the config path hung the whole daemon on SIGHUP, a
    directory or bytes that are not UTF-8 gave a traceback.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except PermissionError:
        raise ConfigError(f"config file not readable: {path}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path} is a directory: --config takes the TOML file, e.g. {path}/netmond.toml")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file (a FIFO, device or socket): "
                              "the config must be a TOML file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is {st.st_size} bytes, more than a config file can be (1 MiB)")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    # Accept both a flat file and one with a [netmond] table.
    if isinstance(data.get("netmond"), dict):
        data = {**{k: v for k, v in data.items() if k != "netmond"}, **data["netmond"]}
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(file_values: dict[str, Any] | None = None, **overrides: Any) -> Config:
    """Merge defaults, file values and overrides (None = not given); validate."""
    merged: dict[str, Any] = {}
    for source in (file_values or {}, {k: v for k, v in overrides.items() if v is not None}):
        for key, value in source.items():
            if key not in _FIELDS:
                raise ConfigError(
                    f"unknown setting {key!r} (known: {', '.join(sorted(_FIELDS))})"
                )
            merged[key] = value
    cfg = Config(**merged)
    validate(cfg)
    return cfg


def load_config(path: str | None = None, **overrides: Any) -> Config:
    """The daemon's config: `path` if given, else the default file if it exists."""
    file_values: dict[str, Any] = {}
    if path:
        file_values = load_file(path)
    else:
        default = paths.default_config_path()
        if os.path.exists(default):
            file_values = load_file(default)
    return build_config(file_values, **overrides)


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return value


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first invalid value."""
    cfg.interval = float(_number("interval", cfg.interval, api.INTERVAL_MIN, api.INTERVAL_MAX))
    hs = _number("history_seconds", cfg.history_seconds, 0, api.HISTORY_SECONDS_MAX)
    if int(hs) != hs:
        raise ConfigError(f"history_seconds must be a whole number, got {hs!r}")
    cfg.history_seconds = int(hs)
    cfg.closed_retention = float(_number("closed_retention", cfg.closed_retention, 0, 86400))
    cfg.max_clients = int(_number("max_clients", cfg.max_clients, 1, 10000))
    cfg.client_idle_timeout = float(
        _number("client_idle_timeout", cfg.client_idle_timeout, 1, 86400)
    )
    cfg.subscriber_queue = int(_number("subscriber_queue", cfg.subscriber_queue, 1, 100000))
    if not isinstance(cfg.ebpf, bool):
        raise ConfigError(f"ebpf must be true or false, got {cfg.ebpf!r}")
    if not isinstance(cfg.resolve, bool):
        raise ConfigError(f"resolve must be true or false, got {cfg.resolve!r}")
    if not isinstance(cfg.store_usage, bool):
        raise ConfigError(f"store_usage must be true or false, got {cfg.store_usage!r}")
    days = _number("usage_retention_days", cfg.usage_retention_days, 1, 36500)
    if int(days) != days:
        raise ConfigError(f"usage_retention_days must be a whole number, got {days!r}")
    cfg.usage_retention_days = int(days)
    cfg.usage_write_interval = float(_number("usage_write_interval", cfg.usage_write_interval, 0.1, 10))
    if not isinstance(cfg.data_dir, str) or "\0" in cfg.data_dir:
        raise ConfigError(f"data_dir must be a directory path, got {cfg.data_dir!r}")
    if not isinstance(cfg.include_loopback, bool):
        raise ConfigError(f"include_loopback must be true or false, got {cfg.include_loopback!r}")
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if not isinstance(cfg.log_level, str) or cfg.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    cfg.log_level = cfg.log_level.lower()
    if not isinstance(cfg.socket, str):
        raise ConfigError(f"socket must be a path, got {cfg.socket!r}")
    if cfg.socket and len(os.fsencode(cfg.socket)) > 100:
        # sun_path is 104 bytes on macOS, 108 on Linux
        raise ConfigError(f"socket path too long for a Unix socket (max 100 bytes): {cfg.socket}")
    if cfg.socket_group is not None and not isinstance(cfg.socket_group, (str, int)):
        raise ConfigError(f"socket_group must be a group name or id, got {cfg.socket_group!r}")
    for key in ("metrics_listen", "metrics_textfile"):
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    if cfg.metrics_listen is not None:
        try:
            split_listen(cfg.metrics_listen)
        except ValueError as exc:
            raise ConfigError(
                f"metrics_listen must be HOST:PORT, an address and a port (e.g. 127.0.0.1:9100, [::1]:9100, "
                f"0.0.0.0:9100 for every interface), got {cfg.metrics_listen!r}: {exc}"
            ) from None


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9101' -> ('127.0.0.1', 9101); '[::1]:9101' -> ('::1', 9101).

    Strict: the host is an IPv4 address in dotted-quad form, `localhost`, or
    an IPv6 address in brackets; the port 1-65535. ValueError otherwise, so
    `0:9352` (which the resolver would turn into 0.0.0.0) is refused rather
    than quietly listening on every interface.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("the port must be a number 1-65535")
    if host.startswith("[") and host.endswith("]"):
        addr = host[1:-1]
        try:
            if ipaddress.ip_address(addr).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        return addr, int(port)
    if host == "localhost":
        return "127.0.0.1", int(port)
    try:
        if host.count(".") != 3 or ipaddress.ip_address(host).version != 4:
            raise ValueError
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv4 address (write 0.0.0.0 for every interface, "
                         "[::1] for IPv6)") from None
    return host, int(port)
