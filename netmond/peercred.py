"""Who is on the other end of a Unix socket, and what that allows (docs/DESIGN.md §7).

The kernel's word on the peer is read per OS by netmond.platform
(peer_credentials); this module holds what it reads into and the rules:
the owner (root, the daemon's user) and members of the socket's group may
control the daemon.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import overload
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PeerCredentials:
    """The connecting process's identity, as the kernel vouches for it."""

    uid: int
    gid: int
    pid: int | None = None
    groups: tuple[int, ...] = field(default=())

    def in_group(self, gid: int) -> bool:
        """True if gid is the peer's primary or a supplementary group."""
        if gid == self.gid or gid in self.groups:
            return True
        if self.groups:
            return False
        # No group list from the kernel (old Linux): look it up by user name.
        try:
            name = pwd.getpwuid(self.uid).pw_name
            return gid in os.getgrouplist(name, self.gid)
        except (KeyError, OSError):
            return False


@overload
def resolve_group(group: None) -> None: ...
@overload
def resolve_group(group: str | int) -> int: ...
def resolve_group(group: str | int | None) -> int | None:
    """A group name or id to a gid; None if unset; KeyError if unknown."""
    if group is None:
        return None
    if isinstance(group, int) or (isinstance(group, str) and group.isdigit()):
        return int(group)
    return grp.getgrnam(group).gr_gid


def is_owner(peer: PeerCredentials | None) -> bool:
    """Root or the user the daemon runs as, by the kernel's word."""
    return peer is not None and peer.uid in (0, os.geteuid())


def may_control(peer: PeerCredentials | None, control_gid: int | None) -> bool:
    """Control rights: root, the daemon's own uid, or the configured group."""
    if peer is None:
        return False
    if is_owner(peer):
        return True
    return control_gid is not None and peer.in_group(control_gid)
