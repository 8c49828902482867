# shellcheck shell=bash
# slearn-gpu/env.sh: the run-time environment of the GPU bundle (launch/gpu-bundle.sh, docs/cuda.md).
# `source slearn-gpu/env.sh` in bash sets it up for the shell; `slearn-gpu/run CMD ARGS` for one command.
#
# The bundle carries every shared library its programs load except glibc, the NVIDIA driver and the CUDA
# libraries (cudart, cuBLAS/cuBLASLt, NCCL): those must match the machine's driver, so they are looked up
# here, at run time, in this order: $SLEARN_CUDA_LIB_PATH (colon-separated directories, to override), the
# nvidia/*/lib directories of python3's packages (nvidia-cuda-runtime, nvidia-cublas, nvidia-nccl-cu13: the
# ones torch uses), a CUDA toolkit ($CUDA_HOME, nvcc's, /usr/local/cuda*), then the loader's cache (ldconfig).
# The programs find the bundle's own libraries through their DT_RPATH, which the loader searches before
# LD_LIBRARY_PATH, so the CUDA directories added to LD_LIBRARY_PATH here cannot replace them, and nothing of
# the bundle leaks into other programs started from this shell (python3 and torch keep their own libraries).
# SLEARN_BUNDLE_QUIET=1 silences the report of what was found. Sourcing fails (returns 1) when a CUDA library
# is missing or the machine's glibc is older than the bundle needs.

_slearn_bundle_say() { [[ "${SLEARN_BUNDLE_QUIET:-0}" == 1 ]] || echo "slearn-gpu: $*" >&2; }

# Directories that may hold the CUDA libraries, one a line, in the order of preference above, with where each
# came from after a tab.
_slearn_bundle_candidate_dirs() {
  local dir sub py nvcc_path
  tr ':' '\n' <<<"${SLEARN_CUDA_LIB_PATH:-}" | sed '/^$/d; s/$/\tSLEARN_CUDA_LIB_PATH/'
  for py in ${SLEARN_PYTHON:-} python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    # nvidia is a namespace package: each of its __path__ entries holds one folder per pip package.
    "$py" - 2>/dev/null <<'PY' | sed 's/$/\tpython3 nvidia package/'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for base in list(nvidia.__path__):
    for lib in sorted(glob.glob(os.path.join(base, "*", "lib"))):
        print(lib)
PY
  done
  nvcc_path="$(command -v nvcc 2>/dev/null || true)"
  local roots=()
  [[ -n "${CUDA_HOME:-}" ]] && roots+=("$CUDA_HOME")
  [[ -n "${CUDA_PATH:-}" ]] && roots+=("$CUDA_PATH")
  [[ -n "$nvcc_path" ]] && roots+=("$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")")
  roots+=(/usr/local/cuda)
  for dir in $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV); do roots+=("$dir"); done
  for dir in "${roots[@]}"; do
    for sub in lib64 lib targets/x86_64-linux/lib; do
      [[ -d "$dir/$sub" ]] && printf '%s\tCUDA toolkit\n' "$dir/$sub"
    done
  done
}

# The directory holding $1 in the loader's cache, if any.
_slearn_bundle_ldconfig_dir() {
  local path
  path="$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null) | awk -v name="$1" '$1 == name && /x86-64/ { print $NF; exit }')"
  [[ -n "$path" ]] && dirname "$path"
}

# Prepends $1 to LD_LIBRARY_PATH unless it is there already.
_slearn_bundle_add_library_dir() {
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$1:"*) ;;
    *) export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  esac
}

_slearn_bundle_setup() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || return 1
  if [[ ! -f "$root/share/slearn-bundle/runtime-libs" ]]; then
    echo "slearn-gpu: error: $root is not an unpacked bundle (launch/gpu-bundle.sh makes one)" >&2
    return 1
  fi

  # glibc: the bundle needs the version its newest symbol comes from (recorded at bundle time).
  local need have
  need="$(sed -n 's/^glibc=//p' "$root/share/slearn-bundle/requires")"
  have="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
  if [[ -n "$need" && -n "$have" ]] && [[ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]]; then
    echo "slearn-gpu: error: this machine's glibc is $have; the bundle needs $need or newer (rebuild it on an older system)" >&2
    return 1
  fi

  # The CUDA libraries the programs link (recorded at bundle time), each from the first directory that has it.
  local candidates soname dir origin found missing=()
  candidates="$(_slearn_bundle_candidate_dirs)"
  local chosen_dirs=()
  while read -r soname; do
    [[ -z "$soname" ]] && continue
    found=""
    while IFS=$'\t' read -r dir origin; do
      [[ -n "$dir" && -e "$dir/$soname" ]] || continue
      found="$dir"
      _slearn_bundle_say "$soname: $dir/$soname ($origin)"
      chosen_dirs+=("$dir")
      break
    done <<<"$candidates"
    if [[ -z "$found" ]]; then
      dir="$(_slearn_bundle_ldconfig_dir "$soname")"
      if [[ -n "$dir" ]]; then
        found="$dir"
        _slearn_bundle_say "$soname: $dir/$soname (loader cache)"
      fi
    fi
    [[ -z "$found" ]] && missing+=("$soname")
  done <"$root/share/slearn-bundle/runtime-libs"
  if ((${#missing[@]} > 0)); then
    echo "slearn-gpu: error: not found: ${missing[*]}. Looked in \$SLEARN_CUDA_LIB_PATH, python3's nvidia/*/lib" \
      "(pip nvidia-cuda-runtime, nvidia-cublas, nvidia-nccl-cu13), the CUDA toolkit (\$CUDA_HOME, nvcc's," \
      "/usr/local/cuda*: lib64, lib, targets/x86_64-linux/lib) and ldconfig's cache. Install the CUDA 13" \
      "runtime libraries, or name their directory in SLEARN_CUDA_LIB_PATH." >&2
    return 1
  fi
  # Added last first, so that the first chosen directory ends up first.
  local i
  for ((i = ${#chosen_dirs[@]} - 1; i >= 0; i--)); do _slearn_bundle_add_library_dir "${chosen_dirs[i]}"; done

  # The driver: cudart loads libcuda.so.1 itself. Without it the CUDA backend reports no device (the GPU tests
  # skip); that is the state of a machine without a GPU, not an error of the bundle.
  local driver=""
  while read -r dir; do
    [[ -n "$dir" && -e "$dir/libcuda.so.1" ]] && { driver="$dir"; break; }
  done <<<"$(tr ':' '\n' <<<"${LD_LIBRARY_PATH:-}")"
  [[ -z "$driver" ]] && driver="$(_slearn_bundle_ldconfig_dir libcuda.so.1)"
  if [[ -z "$driver" && -e /usr/local/nvidia/lib64/libcuda.so.1 ]]; then
    driver=/usr/local/nvidia/lib64
    _slearn_bundle_add_library_dir "$driver"
  fi
  if [[ -n "$driver" ]]; then
    _slearn_bundle_say "libcuda.so.1 (driver): $driver"
  else
    _slearn_bundle_say "libcuda.so.1 (driver): not found; the CUDA backend will report no device"
  fi

  # Open MPI (slearn_dist run calls MPI_Init; alone it is a singleton) and PMIx, relocated into the bundle.
  export OPAL_PREFIX="$root/openmpi" OPAL_EXEC_PREFIX="$root/openmpi" OPAL_BINDIR="$root/bin" OPAL_SBINDIR="$root/bin"
  export OPAL_LIBDIR="$root/lib" OPAL_PKGLIBDIR="$root/lib/openmpi3" OPAL_LIBEXECDIR="$root/openmpi/libexec"
  export OPAL_DATAROOTDIR="$root/openmpi/share" OPAL_DATADIR="$root/openmpi/share"
  export OPAL_PKGDATADIR="$root/openmpi/share/openmpi" OPAL_SYSCONFDIR="$root/openmpi/etc"
  export OPAL_INCLUDEDIR="$root/openmpi/include" OPAL_PKGINCLUDEDIR="$root/openmpi/include"
  export OMPI_MCA_mca_base_component_path="$root/lib/openmpi3"
  export PMIX_PREFIX="$root/pmix" PMIX_LIBDIR="$root/lib" PMIX_PKGLIBDIR="$root/lib/pmix"
  export PMIX_DATAROOTDIR="$root/pmix/share" PMIX_DATADIR="$root/pmix/share" PMIX_PKGDATADIR="$root/pmix/share/pmix"
  export PMIX_SYSCONFDIR="$root/pmix/etc" PMIX_MCA_mca_base_component_path="$root/lib/pmix"
  # hwloc must not load the machine's plugins (another hwloc's ABI): the bundle's plugin folder is empty.
  export HWLOC_PLUGINS_PATH="$root/lib/hwloc"
  # A singleton needs no daemon (no orted in the bundle); machines here run as root, in containers
  # without ptrace for single-copy shared memory.
  export OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

  # The programs, the fixtures (tests/fixtures inside the bundle: tests/test_paths.hpp reads
  # SLEARN_SOURCE_DIR) and the benchmark scripts (perf/gpu, which find the programs under build/bin).
  export SLEARN_BUNDLE_DIR="$root" SLEARN_BIN_DIR="$root/bin" SLEARN_SOURCE_DIR="$root"
  case ":$PATH:" in *":$root/bin:"*) ;; *) export PATH="$root/bin:$PATH" ;; esac
  return 0
}

_slearn_bundle_setup
