"""The daemon's OS-specific code above the backends, chosen once, here.

Below this layer, `netmond/backends/` samples the OS; everything else in
netmond (server, listener, app, main) is portable Python and asks this
package for what differs between systems: who is on the other end of a Unix
socket, the socket launchd hands over, the malloc tuning, the default group
of a system daemon's socket. One module per OS (linux.py, darwin.py); their
pure parts (the credential decoders) import and run anywhere, so they are
tested on Linux with recorded bytes. ctypes is used here and in the
backends only (tests/unit/test_layering.py).
"""

from __future__ import annotations

import sys

from .darwin import launch_activate_socket

if sys.platform.startswith("linux"):
    from .linux import peer_credentials, tune_allocator
elif sys.platform == "darwin":
    from .darwin import peer_credentials, tune_allocator
else:  # another POSIX system: no peer credentials (control for nobody), malloc as it is
    from .other import peer_credentials, tune_allocator

__all__ = ["launch_activate_socket", "peer_credentials", "system_socket_group", "tune_allocator"]

#: The group of a system (root) daemon's socket when none is configured:
#: on macOS, admin (the users who may administer the Mac); elsewhere none,
#: root only (docs/DESIGN.md §7).
_SYSTEM_SOCKET_GROUP = {"darwin": "admin"}


def system_socket_group(os_name: str | None = None) -> str | None:
    """The default socket group of a system daemon on `os_name` (sys.platform
    values; default: this system's)."""
    return _SYSTEM_SOCKET_GROUP.get(sys.platform if os_name is None else os_name)
