"""deploy/: the Dockerfiles install through scripts/setup.sh (what CI runs) and copy only
paths that exist; the systemd units pass `systemd-analyze verify` and name real commands.
(No container engine in CI: the images were built and run with buildah, see deploy/README.md.)"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hark.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILES = ["Dockerfile.server", "Dockerfile.satellite"]
UNITS = ["hark-server.service", "hark-satellite.service"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name, its instructions)]"""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for ins, args in instructions(path):
        if ins == "FROM":
            out.append((args.split()[-1] if " AS " in args.upper() else args, []))
        elif out:
            out[-1][1].append((ins, args))
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_multistage_slim_and_uses_setup_sh(name):
    path = DEPLOY / name
    ins = instructions(path)
    arg = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    assert arg["PYTHON_IMAGE"].startswith("python:3.11-slim")
    st = stages(path)
    assert len(st) >= 2
    build_name, build = st[0]
    assert build_name == "build"
    runs = " ".join(a for i, a in build if i == "RUN")
    assert "bash scripts/setup.sh" in runs
    # the final stages start from the slim base, never from the build stage
    for stage_name, body in st[1:]:
        runs = " ".join(a for i, a in body if i == "RUN")
        assert "build-essential" not in runs and "cmake" not in runs, stage_name
        assert "setup.sh" not in runs
    last_from = [a for i, a in ins if i == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") or f.split()[0] in {s for s, _ in st}
               for f in last_from)
    assert any(i == "USER" and a == "hark" for i, a in ins)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_existing_paths_and_runs_real_commands(name):
    ins = instructions(DEPLOY / name)
    for i, args in ins:
        if i != "COPY" or "--from=" in args:
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
    # the final stage copies the venv the build stage made where setup.sh puts it
    copies = [a for i, a in ins if i == "COPY" and "--from=build" in a]
    assert any(a.split()[-2] == "/opt/hark" for a in copies)
    # ENTRYPOINT/CMD name a registered hark command
    cmd = next(a for i, a in reversed(ins) if i == "CMD")
    sub = shlex.split(cmd.strip("[]").replace(",", " "))[0]
    assert sub in ("serve", "satellite")
    assert callable(build_parser().parse_args([sub]).func)
    # setup.sh (the README's script) exists and installs from pyproject.toml
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'pip" install' in setup and "models pull" in setup


def test_server_targets_bake_or_mount_models():
    st = dict(stages(DEPLOY / "Dockerfile.server"))
    assert "server-nomodels" in st and "server" in st
    baked = [a for i, a in st["server"] if i == "COPY"]
    assert any("/opt/hark-home/models" in a and "/home/hark/.cache/hark/models" in a
               for a in baked)
    assert not any(i == "COPY" and "models" in a for i, a in st["server-nomodels"])
    assert any(i == "HEALTHCHECK" and "/health" in a for i, a in st["server-nomodels"])
    text = (DEPLOY / "Dockerfile.server").read_text()
    assert "10780" in text and 'host = "0.0.0.0"' in text


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(DEPLOY / "systemd" / name)
    return cp


@pytest.mark.parametrize("name", UNITS)
def test_systemd_units_restart_and_allow_realtime(name):
    u = _unit(name)
    svc = u["Service"]
    assert svc["Restart"] == "on-failure"
    assert int(svc["LimitRTPRIO"]) >= 10
    assert svc["LimitMEMLOCK"] == "infinity"
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc.get("RestrictRealtime", "no") == "no"  # would forbid SCHED_FIFO
    assert svc["User"] == "hark"
    exe, *args = shlex.split(svc["ExecStart"])
    assert exe == "/opt/hark/.venv/bin/hark"
    assert args[0] in ("serve", "satellite")
    assert callable(build_parser().parse_args(args).func)  # a registered hark command
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_exec_start_pre_is_a_real_command():
    svc = _unit("hark-server.service")["Service"]
    exe, *args = shlex.split(svc["ExecStartPre"])
    parsed = build_parser().parse_args(args)  # raises SystemExit if the command is unknown
    assert parsed.no_hash is True


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser, with /opt/hark pointed at this checkout so ExecStart exists."""
    if not (REPO / ".venv" / "bin" / "hark").exists():
        pytest.skip("no .venv/bin/hark (run make setup)")
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text().replace("/opt/hark", str(REPO))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *[str(tmp_path / n) for n in UNITS]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
