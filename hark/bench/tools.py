"""Third-party programs hark is measured and tested against (``wyoming-satellite``,
``wyoming-faster-whisper``, ``wyoming-piper``), each in its own virtualenv under
``<home>/tools`` so that its pinned dependencies never meet hark's. hark itself imports
nothing from them: they run as subprocesses and are spoken to over the network."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from hark.errors import HarkError


def tool_python(cache_dir: Path, package: str, version: str, env_var: str) -> Path:
    """A Python with ``package==version`` installed: ``$env_var`` when set, else a
    virtualenv ``cache_dir/package-version`` made with pip on first use (one process
    makes it; others wait for it on a lock). Raises :class:`HarkError` when it cannot be
    installed (no network, no PyPI), naming ``env_var`` as the way out."""
    given = os.environ.get(env_var)
    if given:
        return Path(given)
    venv = Path(cache_dir) / f"{package}-{version}"
    python = venv / "bin" / "python"
    done = venv / ".installed"
    if done.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", f"{package}=={version}"],
                           check=True, capture_output=True, text=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            tail = (getattr(exc, "stderr", None) or str(exc)).strip()[-600:]
            shutil.rmtree(venv, ignore_errors=True)
            raise HarkError(f"cannot install {package}=={version} into {venv}: {tail}",
                            fix=f"give one with {env_var}=/path/to/python (a Python where "
                            f"'pip install {package}=={version}' was run)") from exc
        done.touch()
    return python


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
