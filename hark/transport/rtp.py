"""RTP packets (RFC 3550), written by hand: a fixed 12-byte header and a payload.

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |           synchronization source (SSRC) identifier            |

hark sends no padding, extensions or CSRC lists, so :meth:`RtpPacket.parse` rejects
them along with any other malformed datagram (:class:`~hark.errors.ProtocolError`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hark.errors import ProtocolError

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size  # 12
PT_OPUS = 111  # dynamic payload types, as most SIP/WebRTC stacks number them
PT_PCM = 97  # 16-bit little-endian mono PCM at the session's rate
PT_PROBE = 127  # empty packet that checks a UDP path works (no audio)
PAYLOAD_TYPES = {PT_OPUS: "opus", PT_PCM: "pcm", PT_PROBE: "probe"}
MAX_DATAGRAM = 4096  # 20 ms of 48 kHz PCM is 1920 bytes; anything bigger is garbage


@dataclass(frozen=True)
class RtpPacket:
    seq: int  # 16 bit, wraps
    timestamp: int  # 32 bit, in samples at the payload's clock rate
    ssrc: int  # 32 bit stream id; hark uses it as the session's audio key
    payload: bytes
    pt: int = PT_OPUS
    marker: bool = False  # first packet of a talk spurt

    def pack(self) -> bytes:
        if not (0 <= self.seq < 1 << 16 and 0 <= self.timestamp < 1 << 32
                and 0 <= self.ssrc < 1 << 32 and 0 <= self.pt < 128):
            raise ProtocolError(f"RTP field out of range: seq={self.seq} ts={self.timestamp} "
                                f"ssrc={self.ssrc} pt={self.pt}")
        if HEADER_SIZE + len(self.payload) > MAX_DATAGRAM:
            raise ProtocolError(f"RTP payload of {len(self.payload)} bytes is too large")
        b0 = RTP_VERSION << 6
        b1 = (0x80 if self.marker else 0) | self.pt
        return HEADER.pack(b0, b1, self.seq, self.timestamp, self.ssrc) + self.payload

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; :class:`ProtocolError` says what is wrong with a bad one."""
        if len(data) < HEADER_SIZE:
            raise ProtocolError(f"RTP datagram of {len(data)} bytes is shorter than the "
                                f"{HEADER_SIZE}-byte header")
        if len(data) > MAX_DATAGRAM:
            raise ProtocolError(f"RTP datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
        b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise ProtocolError(f"RTP version {b0 >> 6}, expected {RTP_VERSION}")
        if b0 & 0x20:
            raise ProtocolError("RTP padding is not used by hark")
        if b0 & 0x10:
            raise ProtocolError("RTP header extensions are not used by hark")
        if b0 & 0x0F:
            raise ProtocolError("RTP CSRC lists are not used by hark")
        pt = b1 & 0x7F
        if pt not in PAYLOAD_TYPES:
            raise ProtocolError(f"unknown RTP payload type {pt}")
        payload = bytes(data[HEADER_SIZE:])
        if pt != PT_PROBE and not payload:
            raise ProtocolError("RTP audio packet with an empty payload")
        return cls(seq, ts, ssrc, payload, pt, bool(b1 & 0x80))


def seq_delta(a: int, b: int) -> int:
    """Signed distance from sequence number ``b`` to ``a`` modulo 2**16."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d
