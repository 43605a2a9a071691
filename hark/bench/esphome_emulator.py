"""An ESPHome voice satellite emulator: the device side of the ESPHome native API, built
on aioesphomeapi's own protobuf messages (``aioesphomeapi.api_pb2``, numbered by
``aioesphomeapi.core.MESSAGE_TYPE_TO_PROTO``) and framing, for tests and
``hark bench esphome``. There is no hardware here; this stands in for it.

Framing, as ESPHome devices speak it:

- plaintext: ``0x00``, varint length, varint message type, protobuf bytes;
- encrypted (a device with ``api: encryption: key:``): frames of ``0x01``, 16-bit
  big-endian length, payload. The client's empty hello frame is answered with the
  server hello (``0x01`` = Noise_NNpsk0_25519_ChaChaPoly_SHA256, the device's name and
  MAC, each NUL-terminated); the client's handshake (``0x00`` + Noise message) is read
  as the Noise responder (``noiseprotocol``, prologue ``NoiseAPIInit\\0\\0``, the key
  as PSK) and answered ``0x00`` + the responder's message, or ``0x01`` +
  ``Handshake MAC failure`` when the key differs (then the connection closes). After
  that each frame is ChaCha20-Poly1305 of: 16-bit type, 16-bit length, protobuf bytes.

:class:`EsphomeDevice` answers hello, device_info (its voice assistant feature flags
configurable), list_entities, subscribe_states, ping and disconnect; records
``SubscribeVoiceAssistantRequest`` and every ``VoiceAssistantEventResponse``; on
:meth:`EsphomeDevice.run_turn` it sends ``VoiceAssistantRequest(start=True)``, streams
16 kHz PCM as ``VoiceAssistantAudio`` (in real time unless told not to), followed by
silence, until the server's ``STT_VAD_END`` (then ``VoiceAssistantAudio(end=True)``),
and plays the reply as the real firmware would: a media-player device fetches the URL
(``RUN_START``'s on ``INTENT_PROGRESS tts_start_streaming=1``, else ``TTS_END``'s), a
speaker device collects the ``VoiceAssistantAudio`` between ``TTS_STREAM_START`` and
``TTS_STREAM_END``. ``VoiceAssistantAnnounceRequest`` is fetched the same way and
answered ``VoiceAssistantAnnounceFinished``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aioesphomeapi import VoiceAssistantEventType, VoiceAssistantFeature
from aioesphomeapi import api_pb2 as pb
from aioesphomeapi._frame_helper.noise_encryption import (
    ESPHOME_NOISE_BACKEND,
    NOISE_PROTOCOL_NAME,
    decode_noise_psk,
)
from aioesphomeapi._frame_helper.packets import make_plain_text_packets
from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO
from noise.connection import NoiseConnection

log = logging.getLogger(__name__)

ET = VoiceAssistantEventType
TYPE_OF = {cls: num for num, cls in MESSAGE_TYPE_TO_PROTO.items()}
RATE = 16000
MIC_CHUNK = 512  # samples per VoiceAssistantAudio from the microphone
API_VERSION = (1, 13)

F = VoiceAssistantFeature
MEDIA_PLAYER_FLAGS = F.VOICE_ASSISTANT | F.API_AUDIO | F.TIMERS | F.ANNOUNCE  # Voice PE
SPEAKER_FLAGS = F.VOICE_ASSISTANT | F.SPEAKER | F.API_AUDIO | F.TIMERS  # a speaker: device


class _Closed(Exception):
    pass


def _read_varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(buf):
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return None


@dataclass
class DeviceTurn:
    """What the device saw of one turn."""

    events: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    port: int | None = None
    error: bool = False  # the server answered VoiceAssistantResponse(error=True)
    started: float = 0.0  # monotonic time the microphone began (sample k exists at
    # started + k / 16000; with ``pace`` each chunk is sent once its last sample does)
    mic_samples: int = 0
    reply: bytearray = field(default_factory=bytearray)  # 16-bit PCM
    reply_rate: int = 0
    first_reply_t: float | None = None  # first reply audio byte at the device
    fetched_url: str | None = None
    fetch_status: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    mic_stopped: asyncio.Event = field(default_factory=asyncio.Event)
    responded: asyncio.Event = field(default_factory=asyncio.Event)
    playing: int = 0  # reply streams still being received
    run_ended: bool = False

    @property
    def types(self) -> list[int]:
        return [t for t, _ in self.events]

    def data(self, etype: int) -> dict[str, str]:
        return next((d for t, d in self.events if t == etype), {})

    def samples(self) -> np.ndarray:
        return np.frombuffer(bytes(self.reply), dtype="<i2").astype(np.int16)

    def write_wav(self, path: str | Path) -> None:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.reply_rate or RATE)
            w.writeframes(bytes(self.reply))


class _Conn:
    """One API connection to the device (plaintext or Noise)."""

    def __init__(self, dev: EsphomeDevice, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.dev, self.reader, self.writer = dev, reader, writer
        self.noise: NoiseConnection | None = None
        self._first: bytes = b""  # a plaintext connection's first byte, read by handshake()

    # framing
    async def _read_noise_frame(self) -> bytes:
        head = await self.reader.readexactly(3)
        if head[0] != 0x01:
            raise _Closed(f"bad indicator byte {head[0]}")
        return await self.reader.readexactly((head[1] << 8) | head[2])

    def _write_noise_frame(self, payload: bytes) -> None:
        self.writer.write(bytes((0x01, len(payload) >> 8, len(payload) & 0xFF)) + payload)

    async def read_message(self) -> tuple[int, bytes]:
        if self.noise is None:
            first, self._first = self._first or await self.reader.readexactly(1), b""
            if first[0] != 0x00:
                raise _Closed("not plaintext")
            buf = b""
            while True:  # two varints
                buf += await self.reader.readexactly(1)
                got = _read_varint(buf, 0)
                if got is not None:
                    got2 = _read_varint(buf, got[1])
                    if got2 is not None:
                        length, mtype = got[0], got2[0]
                        break
            return mtype, await self.reader.readexactly(length)
        plain = self.noise.decrypt(await self._read_noise_frame())
        mtype, _ = struct.unpack(">HH", plain[:4])
        return mtype, plain[4:]

    def send(self, msg: Any) -> None:
        data = msg.SerializeToString()
        mtype = TYPE_OF[type(msg)]
        if self.noise is None:
            self.writer.write(b"".join(make_plain_text_packets([(mtype, data)])))
        else:
            self._write_noise_frame(self.noise.encrypt(struct.pack(">HH", mtype, len(data))
                                                       + data))

    async def handshake(self) -> bool:
        """The device's side of the connection set-up; False: refused (and closed)."""
        key = self.dev.key
        first = await self.reader.readexactly(1)
        if key is None:
            if first[0] != 0x00:  # the client wants encryption this device lacks
                self.writer.write(b"".join(make_plain_text_packets(
                    [(TYPE_OF[pb.DisconnectResponse], b"")])))
                return False
            self._first = first
            return True
        if first[0] != 0x01:  # a plaintext client: answer in the Noise framing
            self._write_noise_frame(b"\x01" + b"Bad indicator byte")
            return False
        rest = await self.reader.readexactly(2)
        await self.reader.readexactly((rest[0] << 8) | rest[1])  # the client hello
        name, mac = self.dev.name.encode(), self.dev.mac.encode()
        self._write_noise_frame(b"\x01" + name + b"\x00" + mac + b"\x00")
        frame = await self._read_noise_frame()
        proto = NoiseConnection.from_name(NOISE_PROTOCOL_NAME, backend=ESPHOME_NOISE_BACKEND)
        proto.set_as_responder()
        proto.set_psks(decode_noise_psk(key))
        proto.set_prologue(b"NoiseAPIInit\x00\x00")
        proto.start_handshake()
        try:
            if not frame or frame[0] != 0:
                raise ValueError("bad handshake frame")
            proto.read_message(frame[1:])
        except Exception:  # noqa: BLE001 - any failure is the firmware's MAC failure
            self.dev.handshake_failures += 1
            self._write_noise_frame(b"\x01Handshake MAC failure")
            await self.writer.drain()
            return False
        self._write_noise_frame(b"\x00" + proto.write_message())
        self.noise = proto
        return True


class EsphomeDevice:
    """A voice satellite on loopback speaking the ESPHome native API. ``key``: its
    encryption key (base64) or None for plaintext; ``flags``: its voice assistant
    feature flags (:data:`MEDIA_PLAYER_FLAGS`, :data:`SPEAKER_FLAGS`, ...)."""

    def __init__(self, *, name: str = "kitchen-voice", key: str | None = None,
                 flags: int = MEDIA_PLAYER_FLAGS, mac: str = "a0:b7:65:00:00:01",
                 area: str = ""):
        self.name, self.key, self.flags, self.mac = name, key, int(flags), mac
        self.area = area  # sent as the device's suggested_area (ESPHome's area:)
        self.port = 0
        self.connections = 0
        self.handshake_failures = 0
        self.subscribed = asyncio.Event()
        self.subscribe_flags: int | None = None
        self.announcements: list[DeviceTurn] = []
        self.stray_events: list[tuple[int, dict[str, str]]] = []
        self._conn: _Conn | None = None
        self._server: asyncio.AbstractServer | None = None
        self._turn: DeviceTurn | None = None
        self._tasks: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None

    @property
    def uri(self) -> str:
        return f"esphome://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> EsphomeDevice:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        await self.drop()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._http is not None:
            await self._http.close()

    async def drop(self) -> None:
        """Cut the connection at once (a device losing power or Wi-Fi)."""
        conn, self._conn = self._conn, None
        self.subscribed.clear()
        if conn is not None:
            conn.writer.transport.abort()

    # --- the connection -------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        conn = _Conn(self, reader, writer)
        try:
            if not await conn.handshake():
                return
            self.connections += 1
            self._conn = conn
            while True:
                mtype, data = await conn.read_message()
                cls = MESSAGE_TYPE_TO_PROTO.get(mtype)
                if cls is None:
                    continue
                msg = cls()
                msg.ParseFromString(data)
                if not self._on_message(conn, msg):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, _Closed):
            pass
        finally:
            if self._conn is conn:
                self._conn = None
                self.subscribed.clear()
            with contextlib.suppress(Exception):
                writer.close()

    def _on_message(self, conn: _Conn, msg: Any) -> bool:
        if isinstance(msg, pb.HelloRequest):
            conn.send(pb.HelloResponse(api_version_major=API_VERSION[0],
                                       api_version_minor=API_VERSION[1],
                                       server_info=f"{self.name} (hark emulator)",
                                       name=self.name))
        elif isinstance(msg, pb.DisconnectRequest):
            conn.send(pb.DisconnectResponse())
            return False
        elif isinstance(msg, pb.PingRequest):
            conn.send(pb.PingResponse())
        elif isinstance(msg, pb.DeviceInfoRequest):
            conn.send(pb.DeviceInfoResponse(
                name=self.name, friendly_name=self.name.replace("-", " ").title(),
                mac_address=self.mac, esphome_version="2025.12.0", model="emulator",
                manufacturer="hark", voice_assistant_feature_flags=self.flags,
                api_encryption_supported=self.key is not None, suggested_area=self.area))
        elif isinstance(msg, pb.ListEntitiesRequest):
            conn.send(pb.ListEntitiesDoneResponse())
        elif isinstance(msg, pb.SubscribeVoiceAssistantRequest):
            self.subscribe_flags = msg.flags if msg.subscribe else None
            if msg.subscribe:
                self.subscribed.set()
            else:
                self.subscribed.clear()
        elif isinstance(msg, pb.VoiceAssistantResponse):
            turn = self._turn
            if turn is not None:
                turn.port, turn.error = msg.port, msg.error
                turn.responded.set()
        elif isinstance(msg, pb.VoiceAssistantEventResponse):
            self._on_event(msg.event_type, {d.name: d.value for d in msg.data})
        elif isinstance(msg, pb.VoiceAssistantAudio):
            turn = self._turn
            if turn is not None and msg.data:
                if turn.first_reply_t is None:
                    turn.first_reply_t = time.monotonic()
                turn.reply_rate = RATE
                turn.reply += msg.data
        elif isinstance(msg, pb.VoiceAssistantAnnounceRequest):
            ann = DeviceTurn()
            self.announcements.append(ann)
            self._spawn(self._announce(conn, ann, msg.media_id))
        return True

    def _on_event(self, etype: int, data: dict[str, str]) -> None:
        turn = self._turn
        if turn is None:
            self.stray_events.append((etype, data))
            return
        turn.events.append((etype, data))
        media_player = not (self.flags & F.SPEAKER)
        if etype in (ET.VOICE_ASSISTANT_STT_VAD_END, ET.VOICE_ASSISTANT_ERROR,
                     ET.VOICE_ASSISTANT_RUN_END):
            turn.mic_stopped.set()
        if media_player and etype == ET.VOICE_ASSISTANT_INTENT_PROGRESS \
                and data.get("tts_start_streaming") == "1":
            url = turn.data(ET.VOICE_ASSISTANT_RUN_START).get("url")
            if url and turn.fetched_url is None:
                self._play_url(turn, url)
        elif media_player and etype == ET.VOICE_ASSISTANT_TTS_END:
            url = data.get("url")
            if url and turn.fetched_url is None:
                self._play_url(turn, url)
        elif etype == ET.VOICE_ASSISTANT_TTS_STREAM_START and not media_player:
            turn.playing += 1
        elif etype == ET.VOICE_ASSISTANT_TTS_STREAM_END and not media_player:
            turn.playing -= 1
        if etype == ET.VOICE_ASSISTANT_RUN_END:
            turn.run_ended = True
        if turn.run_ended and turn.playing <= 0:
            turn.done.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _play_url(self, turn: DeviceTurn, url: str) -> None:
        turn.fetched_url = url
        turn.playing += 1

        async def play() -> None:
            try:
                await self._fetch(turn, url)
            finally:
                turn.playing -= 1
                if turn.run_ended and turn.playing <= 0:
                    turn.done.set()

        self._spawn(play())

    async def _fetch(self, turn: DeviceTurn, url: str) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        head = b""
        try:
            async with self._http.get(url) as resp:
                turn.fetch_status = resp.status
                if resp.status != 200:
                    return
                async for data in resp.content.iter_any():
                    if len(head) < 44:
                        need = 44 - len(head)
                        head += data[:need]
                        data = data[need:]
                        if len(head) == 44:
                            turn.reply_rate = struct.unpack("<I", head[24:28])[0]
                    if data:
                        if turn.first_reply_t is None:
                            turn.first_reply_t = time.monotonic()
                        turn.reply += data
        except aiohttp.ClientError as exc:
            log.warning("emulator: fetching %s failed: %s", url, exc)

    async def _announce(self, conn: _Conn, ann: DeviceTurn, url: str) -> None:
        await self._fetch(ann, url)
        ann.done.set()
        if self._conn is conn:
            conn.send(pb.VoiceAssistantAnnounceFinished(success=True))

    # --- what a person does -------------------------------------------------------------------
    async def run_turn(self, samples: np.ndarray, *, pace: bool = True,
                       tail_s: float = 3.0, wake_word: str = "okay nabu",
                       timeout_s: float = 60.0, end_audio: bool = True) -> DeviceTurn:
        """The wake word heard on the device, then ``samples`` (16 kHz int16) and
        ``tail_s`` of silence streamed until the server's end of speech; returns once
        the turn ended and its reply was played (or ``timeout_s`` passed).
        ``end_audio``: send ``VoiceAssistantAudio(end=True)`` when the microphone stops."""
        conn = self._conn
        if conn is None:
            raise ConnectionError("no client connected")
        turn = self._turn = DeviceTurn()
        conn.send(pb.VoiceAssistantRequest(
            start=True, conversation_id="", flags=1,
            audio_settings=pb.VoiceAssistantAudioSettings(noise_suppression_level=0,
                                                          auto_gain=0,
                                                          volume_multiplier=1.0),
            wake_word_phrase=wake_word))
        await asyncio.wait_for(turn.responded.wait(), timeout_s)
        if turn.error:
            return turn
        audio = np.concatenate([samples.astype(np.int16),
                                np.zeros(int(tail_s * RATE), np.int16)])
        turn.started = time.monotonic()
        for i in range(0, len(audio), MIC_CHUNK):
            if turn.mic_stopped.is_set() or self._conn is not conn:
                break
            part = audio[i:i + MIC_CHUNK]
            if pace:  # a chunk is sent once its last sample has been recorded
                wait = turn.started + (turn.mic_samples + len(part)) / RATE - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if turn.mic_stopped.is_set() or self._conn is not conn:
                    break
            else:
                await asyncio.sleep(0)
            conn.send(pb.VoiceAssistantAudio(data=part.astype("<i2").tobytes()))
            turn.mic_samples += len(part)
        if end_audio and self._conn is conn:
            conn.send(pb.VoiceAssistantAudio(end=True))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(turn.done.wait(), timeout_s)
        return turn

    async def stream_forever(self, level: int = 3000, chunks: int = 10_000) -> DeviceTurn:
        """Start a turn and send ``chunks`` loud microphone messages without waiting (a
        device whose audio never stops); returns the turn (not waited for)."""
        conn = self._conn
        if conn is None:
            raise ConnectionError("no client connected")
        turn = self._turn = DeviceTurn()
        conn.send(pb.VoiceAssistantRequest(start=True, flags=1, wake_word_phrase="x"))
        await asyncio.wait_for(turn.responded.wait(), 30)
        data = np.full(MIC_CHUNK, level, np.int16).tobytes()
        for _ in range(chunks):
            if self._conn is not conn:
                break
            conn.send(pb.VoiceAssistantAudio(data=data))
            turn.mic_samples += MIC_CHUNK
            await conn.writer.drain()
        return turn

    def send_raw_audio(self, data: bytes) -> None:
        if self._conn is not None:
            self._conn.send(pb.VoiceAssistantAudio(data=data))

    def stop_request(self) -> None:
        """The device's ``VoiceAssistantRequest(start=False)`` (abort)."""
        if self._conn is not None:
            self._conn.send(pb.VoiceAssistantRequest(start=False))
