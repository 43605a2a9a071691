"""TCP keepalive for long-lived control connections: a peer that vanished (power cut,
Wi-Fi gone, NAT state dropped) is noticed by the kernel after :data:`IDLE_S` of silence
plus :data:`COUNT` unanswered probes :data:`INTERVAL_S` apart, and the connection's reads
then fail, so its session and turn are cleaned up instead of held for ever."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

IDLE_S = 30
INTERVAL_S = 10
COUNT = 3


def enable_keepalive(writer: Any) -> bool:
    """Turn keepalive on for the socket under an asyncio ``StreamWriter``; False when
    there is no TCP socket (or the platform has no such options)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        return False
    for name, value in (("TCP_KEEPIDLE", IDLE_S), ("TCP_KEEPINTVL", INTERVAL_S),
                        ("TCP_KEEPCNT", COUNT)):
        opt = getattr(socket, name, None)
        if opt is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    return True
