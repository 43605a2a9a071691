"""hark doctor on this machine: missing/corrupt models, busy ports, bad config, CPU
features, threads and scheduling, each reported with the command that fixes it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from web_helpers import FakeServer, LiveHttp

from hark import sched
from hark.config import Config
from hark.models.catalogue import CATALOGUE
from hark.server import doctor
from hark.server.doctor import FAIL, OK, WARN

REAL_MODELS = Config().models_dir


def hark(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hark", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def by_name(checks, name):
    return [c for c in checks if c.name == name]


def test_missing_model_fails_naming_the_pull_command(tmp_path):
    proc = hark("--set", f"home_dir={tmp_path}", "doctor", "--no-hash")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    asr = next(i for i, x in enumerate(lines) if x.startswith("FAIL") and "model:asr" in x)
    assert "whisper-tiny.en is not in" in lines[asr]
    assert lines[asr + 1].strip() == "fix: hark models pull whisper-tiny.en"
    assert any(x.startswith("FAIL") and "qwen2.5-0.5b-instruct-q4_k_m" in x for x in lines)
    assert "failed" in proc.stderr


def test_corrupt_model_fails_its_hash(tmp_path):
    spec = CATALOGUE["silero-vad-v6"]
    src = REAL_MODELS / spec.name
    if not src.is_dir():
        pytest.skip("models not pulled (make setup)")
    dst = tmp_path / "models" / spec.name
    shutil.copytree(src, dst)
    cfg = Config(home_dir=str(tmp_path))
    ok = by_name(doctor.check_models(cfg), "model:vad")[0]
    assert ok.status == OK and "sha256 verified" in ok.detail
    f = dst / spec.files[0].name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    bad = by_name(doctor.check_models(cfg), "model:vad")[0]
    assert bad.status == FAIL and "sha256" in bad.detail
    assert bad.fix == "hark models pull --force silero-vad-v6"
    # --no-hash only checks presence, so it cannot see the corruption
    assert by_name(doctor.check_models(cfg, hash_files=False), "model:vad")[0].status == OK


def test_unknown_model_and_wrong_kind(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    cfg.asr.model = "no-such-model"
    cfg.tts.voice = "whisper-tiny.en"
    checks = doctor.check_models(cfg, hash_files=False)
    asr, tts = by_name(checks, "model:asr")[0], by_name(checks, "model:tts")[0]
    assert asr.status == FAIL and "hark models list" in asr.fix
    assert tts.status == FAIL and "is a asr model" in tts.detail


def test_busy_port_fails_unless_it_is_hark(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    for key in ("control_port", "rtp_port", "wyoming_port"):
        setattr(cfg.server, key, free_port())
    port = free_port()
    cfg.server.http_port = port
    assert by_name(doctor.check_ports(cfg), "ports")[0].status == OK
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        checks = doctor.check_ports(cfg)
        assert [c.status for c in checks] == [FAIL]
        assert f"server.http_port {port}/tcp" in checks[0].detail
        assert f"--set server.http_port={port + 100}" in checks[0].fix
    finally:
        blocker.close()
    # the same port held by a running hark server is fine
    live = LiveHttp(FakeServer(), cfg, port=port)
    try:
        checks = doctor.check_ports(cfg)
        assert [c.status for c in checks] == [OK] and "hark server" in checks[0].detail
    finally:
        live.close()


def test_cpu_flags_parsing():
    with_avx = "processor : 0\nflags : fpu sse2 avx avx2 fma f16c\n"
    without = "processor : 0\nflags : fpu sse2 avx\n"
    assert doctor.check_cpu(with_avx)[0].status == OK
    c = doctor.check_cpu(without)[0]
    assert c.status == WARN and "avx2/fma" in c.detail
    assert doctor.check_cpu("Features : fp asimd evtstrm\n")[0].status == OK
    assert doctor.check_cpu("")[0].status == WARN
    real = doctor.cpu_flags()
    assert doctor.check_cpu()[0].status == (OK if {"avx2", "fma"} <= real else WARN)


def test_llama_build_checked_against_the_cpu():
    from hark.config import Config

    cfg = Config()
    avx512_cpu = "flags : fpu avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq\n"
    avx2_build = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    [c] = doctor.check_llama(cfg, avx512_cpu, avx2_build)
    assert c.status == WARN and "AVX-512" in c.detail
    assert "-DGGML_AVX512=ON" in c.fix and "GGML_NATIVE=OFF" in c.fix
    [c] = doctor.check_llama(cfg, avx512_cpu, avx2_build + "AVX512 = 1 | ")
    assert c.status == OK
    [c] = doctor.check_llama(cfg, "flags : fpu avx avx2 fma\n", avx2_build)
    assert c.status == OK  # no AVX-512 on this CPU: nothing to gain
    [c] = doctor.check_llama(cfg, "flags : fpu avx avx2 fma\n", "CPU : SSE3 = 1 | AVX = 1 | ")
    assert c.status == WARN and "without AVX2" in c.detail


def test_thread_oversubscription_warns():
    cfg = Config()
    cfg.llm.n_threads = len(os.sched_getaffinity(0)) + 8
    c = doctor.check_threads(cfg)[0]
    assert c.status == WARN and "llm.n_threads" in c.fix


def test_sched_check_matches_what_the_kernel_allows():
    cfg = Config()
    cfg.sched.mlock = True
    cfg.sched.pin_cores = {"asr": [os.cpu_count() + 3]}
    checks = doctor.check_sched(cfg)
    rt = by_name(checks, "realtime")[0]
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        allowed = True
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        allowed = False
    assert (rt.status == OK) == allowed
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the probe left us alone
    assert by_name(checks, "affinity")[0].status == FAIL
    mlock = by_name(checks, "mlock")[0]
    assert mlock.status in (OK, WARN)
    assert sched.locked_kib() == 0  # the mlock probe undid itself


def test_malformed_config_fails_with_the_key_and_the_fix(tmp_path):
    bad = tmp_path / "hark.toml"
    bad.write_text("[llm]\nn_thread = 4\n")
    proc = hark("--config", str(bad), "doctor", "--no-hash")
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL  config")
    assert "llm.n_thread" in proc.stdout and "n_threads" in proc.stdout


def test_json_output_on_this_machine(tmp_path):
    proc = hark("--set", f"home_dir={tmp_path}", "--set", f"server.http_port={free_port()}",
                "doctor", "--no-hash", "--json")
    checks = json.loads(proc.stdout)
    names = {c["name"] for c in checks}
    assert {"cpu", "threads", "audio", "realtime", "llama.cpp", "onnxruntime", "whisper",
            "model:asr", "ports", "disk", "trace log"} <= names
    assert all(c["status"] in (OK, WARN, FAIL) for c in checks)
    assert proc.returncode == (1 if any(c["status"] == FAIL for c in checks) else 0)
    llama = next(c for c in checks if c["name"] == "llama.cpp")
    assert "llama-cpp-python" in llama["detail"] and "GPU offload" in llama["detail"]


SMI = "NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15\n"


def test_gpu_check_from_nvidia_smi_output():
    cfg = Config()
    assert doctor.nvidia_gpus(SMI) == [{"name": "NVIDIA H100 80GB HBM3",
                                        "memory": "81559 MiB", "driver": "550.54.15"}]
    assert doctor.check_gpu(cfg, smi_output="")[0].status == OK
    cpu_builds = {"llama.cpp": False, "whisper": True, "onnxruntime": None}
    checks = doctor.check_gpu(cfg, smi_output=SMI, support=cpu_builds)
    assert checks[0].status == OK and "H100" in checks[0].detail
    llama = next(c for c in checks if "llama.cpp" in c.detail)
    assert llama.status == WARN and "GGML_CUDA=on" in llama.fix
    idle = next(c for c in checks if "idle" in c.detail)
    assert "asr.device=cuda" in idle.fix and "n_gpu_layers" not in idle.fix
    cfg.asr.device = "cuda"
    assert not any("idle" in c.detail for c in doctor.check_gpu(cfg, SMI, cpu_builds))


def test_gpu_check_on_this_machine():
    checks = doctor.check_gpu(Config())
    if shutil.which("nvidia-smi") is None:
        assert [c.status for c in checks] == [OK] and "CPU" in checks[0].detail
    else:
        assert checks[0].status == OK
