"""Model catalogue: assembly from wheels with sha256 checks, resolution, clear errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from hark.cli import main
from hark.errors import ModelError
from hark.models import store
from hark.models.catalogue import CATALOGUE, ModelFile, ModelSpec, Part


def _fake_wheel(wheels: Path, pkg: str, ver: str, members: dict[str, bytes]) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    name = pkg.replace("-", "_")
    with zipfile.ZipFile(wheels / f"{name}-{ver}-py3-none-any.whl", "w") as z:
        for m, data in members.items():
            z.writestr(m, data)


def _spec(sha: str) -> ModelSpec:
    parts = (Part("split-model-a", "1.0", "a/part1.bin"), Part("split-model-b", "1.0", "b/part2.bin"))
    return ModelSpec("split-model", "llm", "test", "MIT", (ModelFile("m.gguf", parts, sha),),
                     entry="m.gguf")


def test_pull_concatenates_parts_and_checks_hash(tmp_path):
    wheels, models = tmp_path / "wheels", tmp_path / "models"
    _fake_wheel(wheels, "split-model-a", "1.0", {"a/part1.bin": b"hello "})
    _fake_wheel(wheels, "split-model-b", "1.0", {"b/part2.bin": b"world"})
    spec = _spec(hashlib.sha256(b"hello world").hexdigest())
    path = store.pull(spec, models, log=lambda m: None)
    assert Path(path).read_bytes() == b"hello world"
    assert store.verify(spec, models) == []
    # tampering is caught by verify
    Path(path).write_bytes(b"hello w0rld")
    problems = store.verify(spec, models)
    assert problems and "sha256" in problems[0] and "hark models pull split-model" in problems[0]


def test_wrong_hash_is_refused_and_nothing_left_behind(tmp_path):
    wheels, models = tmp_path / "wheels", tmp_path / "models"
    _fake_wheel(wheels, "split-model-a", "1.0", {"a/part1.bin": b"evil "})
    _fake_wheel(wheels, "split-model-b", "1.0", {"b/part2.bin": b"bytes"})
    spec = _spec(hashlib.sha256(b"hello world").hexdigest())
    with pytest.raises(ModelError, match="does not match"):
        store.pull(spec, models, log=lambda m: None)
    assert not any((models / "split-model").iterdir())
    assert not store.is_pulled(models, spec)


def test_resolve_missing_model_names_the_fix(tmp_path):
    with pytest.raises(ModelError) as err:
        store.resolve("whisper-tiny.en", tmp_path / "empty", kind="asr")
    assert "hark models pull whisper-tiny.en" in str(err.value)


def test_resolve_path_hub_and_unknown(tmp_path):
    f = tmp_path / "voice.onnx"
    f.write_bytes(b"x")
    assert store.resolve(str(f), tmp_path) == str(f)
    assert store.resolve("Systran/faster-whisper-small.en", tmp_path) == "Systran/faster-whisper-small.en"
    with pytest.raises(ModelError, match="neither a file"):
        store.resolve("no-such-model", tmp_path)
    with pytest.raises(ModelError, match="not asr"):
        store.resolve("smollm2-135m-instruct-q4_1", tmp_path, kind="asr")


def test_catalogue_entries_are_complete():
    for name, spec in CATALOGUE.items():
        assert spec.name == name and spec.files
        for f in spec.files:
            assert len(f.sha256) == 64 and f.parts
        if spec.entry:
            assert spec.entry in {f.name for f in spec.files}


@pytest.mark.models
def test_default_models_verify(cfg, capsys):
    """The real assembled models (make test pulls them) match their catalogue hashes."""
    rc = main(["models", "verify", "whisper-tiny.en", "piper-en_US-joe-medium",
               "smollm2-135m-instruct-q4_1", "silero-vad-v6"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(": OK") == 4


def test_resource_model_comes_from_the_wheel_where_its_package_is_not_installed(
        tmp_path, monkeypatch):
    """A satellite-only install has no faster-whisper: the Silero VAD it carries is read
    from faster-whisper's wheel instead, with the same sha256 check."""
    spec = CATALOGUE["silero-vad-v6"]
    part = spec.files[0].parts[0]
    real = Path(store._installed_dir(part.package)) / part.member  # this venv has it
    data = real.read_bytes()
    _fake_wheel(tmp_path / "wheels", part.package, part.version,
                {f"{part.package}/{part.member}": data})
    monkeypatch.setattr(store, "_installed_dir", lambda package: None)
    downloads = []
    monkeypatch.setattr(store, "download_wheels",
                        lambda parts, d, log: downloads.append([p.package for p in parts]))
    path = store.pull(spec, tmp_path / "models", log=lambda m: None)
    assert downloads == [[part.package]]  # asked for the wheel (already there: no fetch)
    assert Path(path).read_bytes() == data
    assert store.verify(spec, tmp_path / "models") == []
    # a damaged wheel member is refused like any other part
    (tmp_path / "models2").mkdir()
    _fake_wheel(tmp_path / "wheels2", part.package, part.version,
                {f"{part.package}/{part.member}": data[:-1] + b"x"})
    monkeypatch.setattr(store, "_wheel_for",
                        lambda d, p: next((tmp_path / "wheels2").glob("*.whl")))
    with pytest.raises(ModelError, match="sha256"):
        store.pull(spec, tmp_path / "models2", log=lambda m: None)
