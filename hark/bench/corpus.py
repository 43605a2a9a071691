"""``hark bench corpus``: spoken test corpora in voices hark was not built with.

Writes WAV files (16 kHz mono) and ``transcripts.json`` in the shape ``hark bench latency
--corpus`` reads (text, kind, voice, right intent). Voices come from espeak-ng (its
accents and variants), Piper (its speaking rate and noise), each optionally changed by sox
(speed, pitch, reverberation, added noise). Two disjoint voice sets: ``tune`` is for
calibrating; ``heldout`` is only ever scored, never tuned on.

Needs the Debian packages espeak-ng and sox (``apt-get install espeak-ng sox``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hark.audio import read_audio, resample, write_wav
from hark.errors import HarkError

# 20 home commands for the default home ([home] in the config), with their right intents.
COMMANDS = [
    ("Turn on the kitchen light.", "HassTurnOn"),
    ("Turn off the lights in the bedroom.", "HassTurnOff"),
    ("Switch on the living room lamp.", "HassTurnOn"),
    ("Turn off the ceiling fan.", "HassTurnOff"),
    ("Open the garage door.", "HassTurnOn"),
    ("Close the garage door.", "HassTurnOff"),
    ("Set a timer for ten minutes.", "HassStartTimer"),
    ("Cancel my timer.", "HassCancelTimer"),
    ("What time is it?", "HassGetCurrentTime"),
    ("What's the date today?", "HassGetCurrentDate"),
    ("Set the thermostat to seventy degrees.", "HassClimateSetTemperature"),
    ("Turn the kitchen light off.", "HassTurnOff"),
    ("Turn on the TV.", "HassTurnOn"),
    ("Set the bedroom light to fifty percent.", "HassLightSet"),
    ("Start a timer for five minutes.", "HassStartTimer"),
    ("How much time is left on my timer?", "HassTimerStatus"),
    ("Turn off the TV.", "HassTurnOff"),
    ("Turn on the lights in the kitchen.", "HassTurnOn"),
    ("Switch off the living room lamp.", "HassTurnOff"),
    ("Pause the TV.", "HassMediaPause"),
]
QUESTIONS = [
    "Why is the sky blue?",
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Who painted the Mona Lisa?",
    "How far away is the moon?",
    "What is the largest planet in the solar system?",
    "Tell me a fun fact about cats.",
    "What language is spoken in Brazil?",
]


@dataclass(frozen=True)
class Voice:
    """A voice: an engine, its settings, and sox effects applied after (a list of sox
    effect arguments, e.g. ``["pitch", "-200"]``; ``"noise"`` adds pink noise at
    ``snr_db``)."""

    name: str
    engine: str  # "espeak" | "piper"
    voice: str = ""  # espeak-ng voice[+variant]
    rate: int = 165  # espeak words per minute
    length_scale: float = 1.0  # piper: > 1 slower
    effects: tuple[str, ...] = ()
    snr_db: float | None = None


VOICES = {
    "tune": [
        Voice("espeak-us-m3", "espeak", "en-us+m3", 160),
        Voice("espeak-rp-f2", "espeak", "en-gb-x-rp+f2", 170),
        Voice("espeak-caribbean", "espeak", "en-029", 150),
        Voice("piper-slow-reverb", "piper", length_scale=1.25, effects=("reverb", "40")),
    ],
    "heldout": [
        Voice("espeak-scotland-f4-reverb", "espeak", "en-gb-scotland+f4", 155,
              ("reverb", "50")),
        Voice("espeak-midlands-m7-pitch", "espeak", "en-gb-x-gbcwmd+m7", 175,
              ("pitch", "-250")),
        Voice("espeak-us-f5-fast-noise", "espeak", "en-us+f5", 190, ("speed", "1.05"),
              snr_db=15.0),
        Voice("piper-fast-noise", "piper", length_scale=0.85, snr_db=12.0),
    ],
}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise HarkError(f"{tool} is not installed", fix="apt-get install espeak-ng sox")
    return path


def _speak(voice: Voice, text: str, tts) -> np.ndarray:
    """int16 16 kHz audio of ``text`` in ``voice`` (before sox effects)."""
    if voice.engine == "espeak":
        out = subprocess.run([_need("espeak-ng"), "-v", voice.voice, "-s", str(voice.rate),
                              "--stdout", text], check=True, capture_output=True).stdout
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            f.write(out)
            f.flush()
            return read_audio(f.name)
    engine = tts(voice.length_scale)
    audio = np.concatenate([c.samples for c in engine.synthesize(text)])
    return resample(audio, engine.sample_rate, 16000)


def _effects(audio: np.ndarray, effects: tuple[str, ...]) -> np.ndarray:
    if not effects:
        return audio
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.wav", Path(d) / "out.wav"
        write_wav(src, audio, 16000)
        subprocess.run([_need("sox"), str(src), "-r", "16000", "-c", "1", str(dst),
                        *effects, "rate", "16000"], check=True, capture_output=True)
        return read_audio(dst)


def _add_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(len(audio) + 64)
    pink = np.convolve(white, np.ones(64) / 8, mode="valid")[: len(audio)]  # low-passed
    x = audio.astype(np.float64)
    speech = np.sqrt(np.mean(x[np.abs(x) > 300] ** 2)) if np.any(np.abs(x) > 300) else 1.0
    noise = pink / (np.sqrt(np.mean(pink ** 2)) or 1.0) * speech / (10 ** (snr_db / 20))
    return np.clip(x + noise, -32768, 32767).astype(np.int16)


def make_corpus(out: Path, which: str, cfg) -> dict[str, dict]:
    """Write the ``which`` ("tune" | "heldout") corpus into ``out``: each command in two
    of the set's voices and each question in one, alternating, so every voice speaks."""
    if which not in VOICES:
        raise HarkError(f"no voice set {which!r}", fix=f"one of {', '.join(VOICES)}")
    voices = VOICES[which]
    engines: dict[float, object] = {}

    def tts(length_scale: float):  # one Piper per speaking rate
        if length_scale not in engines:
            import copy

            from hark.tts.piper import load_tts

            c = copy.deepcopy(cfg)
            c.tts.length_scale = length_scale
            engines[length_scale] = load_tts(c)
        return engines[length_scale]
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, dict] = {}
    items = [(t, "command", i) for t, i in COMMANDS] + [(t, "question", "LLM")
                                                       for t in QUESTIONS]
    n = 0
    for k, (text, kind, intent) in enumerate(items):
        picks = [voices[k % len(voices)], voices[(k + 1) % len(voices)]] \
            if kind == "command" else [voices[k % len(voices)]]
        for voice in picks:
            n += 1
            audio = _effects(_speak(voice, text, tts), voice.effects)
            if voice.snr_db is not None:
                audio = _add_noise(audio, voice.snr_db, seed=n)
            name = f"{n:03d}_{voice.name}.wav"
            write_wav(out / name, audio, 16000)
            meta[name] = {"text": text, "kind": kind, "voice": voice.name, "intent": intent}
    (out / "transcripts.json").write_text(json.dumps(meta, indent=1))
    return meta


def cmd_bench_corpus(args) -> int:
    """``hark bench corpus`` (options in :mod:`hark.bench.cli`)."""
    from hark.cli import load_cfg

    meta = make_corpus(Path(args.out), args.voices, load_cfg(args))
    voices = sorted({m["voice"] for m in meta.values()})
    print(f"{len(meta)} utterances in {len(voices)} voices ({', '.join(voices)}) -> {args.out}")
    return 0
