#!/usr/bin/env bash
# Installs what slearn needs from Debian's packages (only what is missing), then configures and builds into
# build/. Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail

SLEARN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SLEARN_PACKAGES=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin        # MPI: processes, sharding, small collectives
  libhdf5-dev                       # checkpoints
  libxxhash-dev                     # fingerprints of models, data and run configs
  libyaml-cpp-dev                   # configs
  nlohmann-json3-dev                # JSON, JSONL, config.json, tokenizer.json
  libopenblas-openmp-dev            # CPU GEMMs (OpenMP build: one thread pool with ours)
  libpcre2-dev libutf8proc-dev      # the tokenizer's Unicode regex and NFC normalization
  libgtest-dev                      # tests
  libcli11-dev                      # command-line parsing
  python3                           # command-line tests (standard library only)
  python3-matplotlib                # the plots of slearn_dist report (drawn with /usr/bin/python3)
  clang-16 libclang-rt-16-dev llvm  # fuzz tests (launch/fuzz.sh): libFuzzer, ASan/UBSan runtimes, symbolizer
)

slearn_install_packages() {
  local missing=()
  for package in "${SLEARN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "setup: installing ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

slearn_build() {
  local jobs
  jobs="$(nproc)"
  cmake -S "$SLEARN_ROOT" -B "$SLEARN_ROOT/build" -DCMAKE_BUILD_TYPE=Release ${SLEARN_CMAKE_ARGS:-}
  cmake --build "$SLEARN_ROOT/build" -j "$jobs"
}

slearn_install_packages
slearn_build
