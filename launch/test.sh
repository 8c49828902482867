#!/usr/bin/env bash
# Sets up (packages, build) and runs the whole test suite with ctest. Extra arguments go to ctest,
# e.g. launch/test.sh -L unit  or  launch/test.sh -R Tokenizer
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/setup.sh"
cd "$SLEARN_ROOT/build"
# Open MPI refuses to start as root unless told; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --output-on-failure -j "$(nproc)" --timeout 600 "$@"
