"""What netmon's `bytes_sent` / `bytes_received` mean on Linux, from tcp_info.

Meaning (the same on every platform):
    bytes_sent      payload bytes of this socket that the peer acknowledged,
                    i.e. that really reached the other end; retransmissions
                    are not counted twice and SYN/FIN are not payload.
    bytes_received  payload bytes that arrived in order from the peer.

tcp_info counts sequence numbers, not payload, so the raw counters include
the SYN and FIN flags, which each take one sequence number. The rules below
were verified on Linux 6.18 with loopback connections that sent exactly N
bytes one way and M the other (see tests/integration/test_linux_backend.py):

    raw counter            client (active open)            server (passive open)
    bytes_acked            1 (SYN) + N, + 1 once our FIN    N, + 1 once our FIN
                           is acknowledged                  is acknowledged
    bytes_received         M, + 1 once the peer's FIN       N, + 1 once the
                           has arrived                      peer's FIN has arrived
    bytes_sent (4.19+)     N + retransmitted bytes          (same)
    bytes_retrans (4.19+)  retransmitted bytes              (same)

The SYN-ACK of a passive open is not counted in bytes_acked (the kernel sets
snd_una directly when the handshake completes), nor is the peer's SYN in
bytes_received. A reset socket (close() with unread data) sends RST instead
of FIN, so no FIN is counted on that side; one aborted with SO_LINGER 0 is
disconnected first and its destroy event carries zeroed counters and port.
Every destroy event carries state CLOSE and inode 0, whatever the path.

Correction rules:

* bytes_sent = bytes_acked - SYN - FIN where
    SYN = 1 for the active-open side once the SYN was acknowledged (any state
          but SYN_SENT); which side a socket is comes from its own counters,
          see "Which side opened" below;
    FIN = 1 in FIN_WAIT2 and TIME_WAIT, the states where our FIN is known to
          have been acknowledged (FIN_WAIT1, CLOSING, LAST_ACK: sent, not yet
          acknowledged).
  The result is then capped at the unique payload transmitted,
  bytes_sent - bytes_retrans, when the kernel (4.19+) reports it. The cap makes
  the result exact in state CLOSE - the state every destroy event carries,
  where the sequence of states that led there is unknown - and it also
  absorbs a wrong guess of the SYN side once all data is acknowledged. On
  kernels older than 4.19 a socket in CLOSE is assumed to have closed
  gracefully (our FIN acknowledged).

* bytes_received = bytes_received - FIN where FIN = 1 in CLOSE_WAIT,
  LAST_ACK, CLOSING and TIME_WAIT (the peer's FIN has arrived). In CLOSE the
  peer's FIN is assumed to have arrived exactly when ours was acknowledged
  (a graceful close). That is exact for the passive closer and for an active
  closer that read the peer's FIN before closing; an active closer that
  closed before the peer's FIN arrived is reported one byte short, unless
  the backend saw it in an earlier dump (linux.py then keeps the exact count
  of that dump as a floor) or its peer is on this machine (linux.py then
  takes the payload the peer sent, which its own counters give exactly;
  peer_fin_assumed says when to look). A socket that received no payload segment at all
  (tcpi_data_segs_in == 0, 4.6+) reports 0.

Which side opened (`opened_actively`): the SYN is the one sequence number
only the active opener has acknowledged, so the kernel's counters say it
outright whenever nothing is in flight. With u = bytes_sent - bytes_retrans
(the unique payload sent, 4.19+) and tcpi_unacked = 0 (every segment sent,
FIN included, acknowledged):

    state                          bytes_acked - u    active    passive
    ESTABLISHED, CLOSE_WAIT        (our FIN unsent)          1          0
    FIN_WAIT2, TIME_WAIT           (our FIN acked)           2          1
    CLOSE (destroy event: queues purged, so unacked reads 0)
                                   graceful                  2          1
                                   our FIN unacknowledged    1          0

SYN_SENT is active and SYN_RECV passive by definition. Verified on Linux
6.18 (tests/integration/test_linux_backend.py). The one ambiguous reading
is 1 in CLOSE (a passive end that closed gracefully, or an active one whose
FIN was never acknowledged); the caller decides it from what else it knows
(an earlier dump, a listener on the socket's port). A socket seen only with
data in flight stays undecided (None) until a reading without; meanwhile it
is counted as the active side, which can only be one byte low, so that the
count grows by one when the side is settled and never goes backwards. The
cap below makes bytes_sent exact in CLOSE whichever side was assumed.
Nothing here depends on a listener still existing.

Result: for a completed transfer, bytes_sent equals the payload the
application wrote, exactly, on both ends (on 4.19+; before, exactly for a
graceful close and a right SYN-side guess); bytes_received equals the payload
read to within one byte as described. Both are monotonic over a socket's life
as long as the caller keeps its SYN-side guess for that socket.
"""

from __future__ import annotations

from .netlink import (
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCP_SYN_RECV,
    TCP_CLOSE_WAIT,
    TCP_CLOSING,
    TCP_FIN_WAIT2,
    TCP_LAST_ACK,
    TCP_SYN_SENT,
    TCP_TIME_WAIT,
    TcpCounters,
)

#: States in which our FIN has been acknowledged by the peer.
_OWN_FIN_ACKED = frozenset({TCP_FIN_WAIT2, TCP_TIME_WAIT})
#: States in which our FIN has not been sent: bytes_acked is SYN + payload.
_OWN_FIN_UNSENT = frozenset({TCP_ESTABLISHED, TCP_CLOSE_WAIT})
#: States in which the peer's FIN has arrived.
_PEER_FIN_RECEIVED = frozenset({TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING, TCP_TIME_WAIT})


def payload(c: TcpCounters, state: int, active_open: bool) -> tuple[int, int]:
    """(bytes_sent, bytes_received) as netmon means them, from raw counters.

    `state` is the kernel TCP state number; `active_open` whether this end
    called connect() (its SYN is counted in bytes_acked). One function for
    both directions because the backend calls it for every socket every tick.
    """
    acked, received, data_segs_in, sent_with_retrans, retrans, _unacked = c
    # SYN: counted once acknowledged, only on the active-open side.
    if active_open and state != TCP_SYN_SENT and acked > 0:
        acked -= 1
    # Our FIN: known acknowledged in these states ...
    own_fin_acked = state in _OWN_FIN_ACKED
    if own_fin_acked:
        acked -= 1
    elif state == TCP_CLOSE:
        # ... and in CLOSE (destroy events) deduced from the unique payload
        # sent (4.19+), which bounds the payload acknowledged: anything
        # beyond it is the FIN. Older kernels: assume a graceful close.
        if sent_with_retrans is None or retrans is None:  # (both 4.19+)
            own_fin_acked = True
            acked -= 1
        else:
            own_fin_acked = acked > sent_with_retrans - retrans
    if sent_with_retrans is not None and retrans is not None:
        unique_sent = sent_with_retrans - retrans
        if acked > unique_sent:
            acked = unique_sent
    # Peer's FIN: known received in these states; in CLOSE assumed received
    # exactly when our own FIN was acknowledged (a graceful close).
    if data_segs_in == 0:
        received = 0  # no payload segment ever arrived: at most a FIN
    elif state in _PEER_FIN_RECEIVED or (state == TCP_CLOSE and own_fin_acked):
        received -= 1
    return (acked if acked > 0 else 0), (received if received > 0 else 0)


def peer_fin_assumed(c: TcpCounters, state: int, active_open: bool) -> bool:
    """Whether payload() took one off bytes_received for a peer's FIN it
    could not see: a destroy event (CLOSE) of an end whose own FIN was
    acknowledged, where the peer's FIN may have come before the end was
    destroyed (counted) or not yet (an end that closed first is destroyed
    once its FIN is acknowledged). The caller may settle it from the peer."""
    if state != TCP_CLOSE or c.data_segs_in == 0:
        return False
    if c.bytes_sent is None or c.bytes_retrans is None:
        return True  # older kernels: a graceful close is assumed
    return c.bytes_acked - (1 if active_open else 0) > c.bytes_sent - c.bytes_retrans


def opened_actively(c: TcpCounters, state: int) -> bool | None:
    """True if this end sent the SYN (connect()), False if it accepted it,
    None when its counters cannot tell yet (see "Which side opened")."""
    if state == TCP_SYN_SENT:
        return True
    if state == TCP_SYN_RECV:
        return False
    sent_with_retrans, retrans, unacked = c.bytes_sent, c.bytes_retrans, c.unacked
    if sent_with_retrans is None or retrans is None:
        return None  # kernel < 4.19: no count of the payload sent
    beyond_payload = c.bytes_acked - (sent_with_retrans - retrans)
    if state == TCP_CLOSE:
        # Destroy events: 2 = SYN + FIN, 0 = neither; 1 is ambiguous.
        return True if beyond_payload == 2 else False if beyond_payload == 0 else None
    if unacked != 0:
        return None  # in flight (or unknown): bytes_acked trails the payload sent
    if state in _OWN_FIN_UNSENT:
        return beyond_payload == 1
    if state in _OWN_FIN_ACKED:
        return beyond_payload == 2
    return None
