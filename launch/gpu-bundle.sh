#!/usr/bin/env bash
# launch/gpu-bundle.sh: builds the CUDA programs for sm_90 and packs them, with everything they load, into one
# archive for a GPU machine that has none of this project's dependencies (the device machine: docs/cuda.md).
#   launch/gpu-bundle.sh [--no-build] [--rehearse] [--jobs N]
# Output: .gpu-bundle/slearn-gpu.tar.xz (git-ignored; at most 48 MiB, else this fails). On the GPU machine:
#   tar -xJf .gpu-bundle/slearn-gpu.tar.xz -C /tmp && /tmp/slearn-gpu/run slearn_gpu_tests
# --rehearse then unpacks it in a bare Debian chroot and runs it there (launch/gpu-bundle/rehearse.sh).
#
# What goes in: bin/ slearn_dist, slearn_gpu_tests and every bench_gpu_* target; lib/ every shared library they
# load (found with ldd, with the Open MPI and PMIx components a singleton MPI_Init opens) except glibc, the
# NVIDIA driver and the CUDA libraries (cudart, cuBLAS/cuBLASLt, NCCL), which must match the machine's driver
# and are found there at run time by env.sh; tests/fixtures; perf/gpu (the benchmark scripts, which find the
# programs under build/bin, a link to bin/); Open MPI's and PMIx's help and parameter files.
# The programs carry DT_RPATH $ORIGIN/../lib and the libraries that had a run path $ORIGIN: the loader
# searches DT_RPATH before LD_LIBRARY_PATH, so the bundle's libraries are the ones loaded whatever the machine
# has, and nothing but env.sh's CUDA directories is put into the environment of other programs.
# The CPU code is built for x86-64-v3 (AVX2, FMA) instead of -march=native: the GPU machine's processor is not
# this one.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-bundle"
out_dir="$root/.gpu-bundle"
archive="$out_dir/slearn-gpu.tar.xz"
stage="$out_dir/stage"
bundle="$stage/slearn-gpu"
max_mib=48
jobs=2
do_build=1
rehearse=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) do_build=0 ;;
    --rehearse) rehearse=1 ;;
    --jobs) jobs="$2"; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-bundle: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "gpu-bundle: $*" >&2; }
die() { echo "gpu-bundle: error: $*" >&2; exit 1; }
started=$SECONDS

for tool in ldd patchelf objdump xz tar; do
  command -v "$tool" >/dev/null || die "$tool is missing (patchelf: apt-get install patchelf; objdump: binutils)"
done

# ---- build ----
if ((do_build)); then
  launcher=()
  if command -v ccache >/dev/null; then
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(dirname "$root")}"
    if [[ -z "${CCACHE_DIR:-}" && -d "$(dirname "$root")/.ccache" ]]; then export CCACHE_DIR="$(dirname "$root")/.ccache"; fi
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSLEARN_CUDA=ON -DSLEARN_CUDA_ARCHITECTURES=90 \
    -DSLEARN_NATIVE=OFF -DCMAKE_CXX_FLAGS=-march=x86-64-v3 "${launcher[@]}" >/dev/null
fi
[[ -f "$build/CMakeCache.txt" ]] || die "$build is not configured (run without --no-build)"
# The GPU benchmarks are whatever bench_gpu_* targets perf/ defines at the time.
mapfile -t benches < <(cmake --build "$build" --target help 2>/dev/null |
  sed -nE 's/^(\.\.\. )?(bench_gpu_[A-Za-z0-9_]+)(: .*)?$/\2/p' | sort -u)
programs=(slearn_dist slearn_gpu_tests "${benches[@]}")
if ((do_build)); then
  say "building ${programs[*]} in $build (-j$jobs)"
  cmake --build "$build" -j"$jobs" --target "${programs[@]}"
fi
build_s=$((SECONDS - started))
for p in "${programs[@]}"; do [[ -x "$build/bin/$p" ]] || die "$build/bin/$p was not built"; done

# ---- stage ----
rm -rf "$stage"
mkdir -p "$bundle"/{bin,lib/openmpi3,lib/pmix,lib/hwloc,share/slearn-bundle,tests,perf,build}
mkdir -p "$bundle"/openmpi/{etc,share/openmpi,libexec,include} "$bundle"/pmix/{etc,share/pmix}
manifest="$bundle/share/slearn-bundle/manifest.txt"
: >"$manifest"

# Libraries that stay on the machine: glibc (must be the machine's own), the driver, and the CUDA libraries
# (matched to the driver; env.sh finds them).
is_glibc() {
  [[ "$1" =~ ^(ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libmvec\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libresolv\.so\.2|libutil\.so\.1|libanl\.so\.1|libnsl\.so\.1|libBrokenLocale\.so\.1|libnss_[a-z]+\.so\.2|libthread_db\.so\.1|libc_malloc_debug\.so\.0|linux-vdso\.so\.1)$ ]]
}
is_cuda_runtime() { [[ "$1" =~ ^(libcuda\.so|libnvidia-|libcudart\.so|libcublas\.so|libcublasLt\.so|libnccl\.so) ]]; }
# Interconnect stacks an Open MPI component may need: components that need them are left out (one GPU, one node).
is_fabric() { [[ "$1" =~ ^(libfabric|libuc[pmst]|libibverbs|librdmacm|libpsm|libinfinipath|libnl-|libmlx|libefa|libhcoll)\. ]]; }

declare -A bundled=()   # soname -> source path
declare -A runtime=()   # CUDA sonames the programs need at run time
# ldd's closure of an ELF file as "soname<TAB>path" lines (path "not found" when unresolved).
closure() {
  ldd "$1" | awk '
    $2 == "=>" && $3 == "not" { print $1 "\tnot found"; next }
    $2 == "=>" && $3 ~ /^\// { print $1 "\t" $3; next }
    $1 ~ /^\// { n = split($1, parts, "/"); print parts[n] "\t" $1 }'
}
# Adds the closure of $1 to the bundle; with $2 = component, returns 1 (adding nothing) when the closure
# needs a library that is missing or an interconnect stack.
add_closure() {
  local elf="$1" kind="${2:-program}" soname path lines
  lines="$(closure "$elf")"
  if [[ "$kind" == component ]]; then
    while IFS=$'\t' read -r soname path; do
      [[ -z "$soname" ]] && continue
      if [[ "$path" == "not found" ]] || is_fabric "$soname"; then
        echo "skipped component $(basename "$elf"): needs $soname" >>"$manifest.skipped"
        return 1
      fi
    done <<<"$lines"
  fi
  while IFS=$'\t' read -r soname path; do
    [[ -z "$soname" ]] && continue
    if is_glibc "$soname"; then continue; fi
    if is_cuda_runtime "$soname"; then runtime[$soname]=1; continue; fi
    [[ "$path" == "not found" ]] && die "$(basename "$elf") needs $soname, which ldd does not find here"
    bundled[$soname]="$(readlink -f "$path")"
  done <<<"$lines"
}
# Gives the library or component $1 the run path $2 if it has one (or always, with $3 = always).
relocate_runpath() {
  if [[ "${3:-}" == always || -n "$(patchelf --print-rpath "$1")" ]]; then
    patchelf --force-rpath --set-rpath "$2" "$1"
  fi
}

for p in "${programs[@]}"; do
  cp "$build/bin/$p" "$bundle/bin/$p"
  add_closure "$build/bin/$p"
  patchelf --force-rpath --set-rpath '$ORIGIN/../lib' "$bundle/bin/$p"
done

# Open MPI: the components a singleton MPI_Init opens (all but interconnects and OpenSHMEM), their help
# texts and default parameters; PMIx likewise. Their sources follow Debian's libmpi and libpmix.
mpi_components=0
# Where this Open MPI keeps them: ompi_info's paths (openmpi-bin), else Debian's.
ompi_path() {
  local value
  value="$(ompi_info --path "$1" --parsable 2>/dev/null | sed -n "s/^path:$1://p")"
  echo "${value:-$2}"
}
if [[ -n "${bundled[libmpi.so.40]:-}" ]]; then
  ompi_pkglibdir="$(ompi_path pkglibdir /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3)"
  ompi_pkgdatadir="$(ompi_path pkgdatadir /usr/share/openmpi)"
  ompi_sysconfdir="$(ompi_path sysconfdir /etc/openmpi)"
  for c in "$ompi_pkglibdir"/*.so; do
    case "$(basename "$c")" in mca_atomic_*|mca_memheap_*|mca_scoll_*|mca_spml_*|mca_sshmem_*) continue ;; esac
    add_closure "$c" component || continue
    cp "$c" "$bundle/lib/openmpi3/"
    relocate_runpath "$bundle/lib/openmpi3/$(basename "$c")" '$ORIGIN/..' always
    mpi_components=$((mpi_components + 1))
  done
  ((mpi_components > 0)) || die "no Open MPI component found in $ompi_pkglibdir"
  cp -r "$ompi_pkgdatadir/." "$bundle/openmpi/share/openmpi/"
  cp "$ompi_sysconfdir"/openmpi-mca-params.conf "$ompi_sysconfdir"/openmpi-default-hostfile "$bundle/openmpi/etc/"
fi
if [[ -n "${bundled[libpmix.so.2]:-}" ]]; then
  pmix_libdir="$(dirname "${bundled[libpmix.so.2]}")"
  for c in "$pmix_libdir"/pmix/*.so; do
    add_closure "$c" component || continue
    cp "$c" "$bundle/lib/pmix/"
    relocate_runpath "$bundle/lib/pmix/$(basename "$c")" '$ORIGIN/..' always
  done
  cp -r "$pmix_libdir/../share/pmix/." "$bundle/pmix/share/pmix/"
  # Its component path is Debian's absolute one; env.sh sets PMIX_MCA_mca_base_component_path instead.
  grep -v '^mca_base_component_path' "$pmix_libdir/../share/pmix-mca-params.conf" >"$bundle/pmix/etc/pmix-mca-params.conf"
fi

for soname in "${!bundled[@]}"; do
  cp "${bundled[$soname]}" "$bundle/lib/$soname"
  chmod u+w "$bundle/lib/$soname"
  relocate_runpath "$bundle/lib/$soname" '$ORIGIN'
done
printf '%s\n' "${!runtime[@]}" | sort >"$bundle/share/slearn-bundle/runtime-libs"
[[ -s "$bundle/share/slearn-bundle/runtime-libs" ]] || die "no CUDA library among the programs' dependencies: is this a CUDA build?"

# Data and scripts, in the repository's layout, so that relative paths of configs and scripts hold.
cp -r "$root/tests/fixtures" "$bundle/tests/"
if [[ -d "$root/perf/gpu" ]]; then cp -r "$root/perf/gpu" "$bundle/perf/"; fi
find "$bundle" -name __pycache__ -type d -prune -exec rm -rf {} +
ln -s ../bin "$bundle/build/bin"
cp "$root/launch/gpu-bundle/env.sh" "$root/launch/gpu-bundle/run" "$bundle/"
chmod +x "$bundle/run"

# The newest glibc symbol version anything in the bundle needs (env.sh checks the machine against it).
glibc_needed="$(find "$bundle/bin" "$bundle/lib" -type f \( -name '*.so*' -o -perm -u+x \) -print0 |
  xargs -0 objdump -T 2>/dev/null | grep -oE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' | sed 's/GLIBC_//' | sort -uV | tail -1)"
revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$root" diff --quiet HEAD 2>/dev/null || revision="$revision+local-changes"
{
  echo "glibc=$glibc_needed"
  echo "built=$(date -u +%FT%TZ) from $revision on $(. /etc/os-release && echo "$PRETTY_NAME")"
} >"$bundle/share/slearn-bundle/requires"

# Fixtures: the tests look for them under SLEARN_SOURCE_DIR when they honour it, else at the compiled-in path.
if ! grep -qa 'SLEARN_SOURCE_DIR' "$bundle/bin/slearn_gpu_tests"; then
  say "warning: slearn_gpu_tests does not read SLEARN_SOURCE_DIR: it looks for the fixtures under $root," \
    "which the GPU machine may not have (tests/test_paths.hpp should honour the variable)"
fi

{
  echo "# slearn GPU bundle: $(sed -n 's/^built=//p' "$bundle/share/slearn-bundle/requires")"
  echo "# configure: -DCMAKE_BUILD_TYPE=Release -DSLEARN_CUDA=ON -DSLEARN_CUDA_ARCHITECTURES=90 -DSLEARN_NATIVE=OFF -DCMAKE_CXX_FLAGS=-march=x86-64-v3"
  echo "# needs glibc >= $glibc_needed, the NVIDIA driver, and at run time: $(tr '\n' ' ' <"$bundle/share/slearn-bundle/runtime-libs")"
  echo "## programs"
  for p in "${programs[@]}"; do echo "bin/$p $(stat -c %s "$bundle/bin/$p")"; done
  echo "## libraries (lib/soname <- source, Debian package)"
  for soname in $(printf '%s\n' "${!bundled[@]}" | sort); do
    pkg="$(dpkg -S "${bundled[$soname]}" 2>/dev/null || dpkg -S "${bundled[$soname]#/usr}" 2>/dev/null || true)"
    pkg="${pkg%%:*}"
    ver="$( [[ -n "$pkg" ]] && dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)"
    echo "lib/$soname <- ${bundled[$soname]} ${pkg:-?} ${ver}"
  done
  echo "## Open MPI components: $mpi_components in lib/openmpi3; PMIx components in lib/pmix"
  if [[ -f "$manifest.skipped" ]]; then sort "$manifest.skipped"; fi
} >>"$manifest"
rm -f "$manifest.skipped"

# ---- archive ----
mkdir -p "$out_dir"
say "packing $(du -sh --apparent-size "$bundle" | cut -f1) ($(find "$bundle" -type f | wc -l) files)"
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner -cf - slearn-gpu | xz -T0 -9 >"$archive.tmp"
size=$(stat -c %s "$archive.tmp")
if ((size > max_mib * 1024 * 1024)); then
  rm -f "$archive.tmp"
  die "the archive is $((size / 1024 / 1024)) MiB, over the $max_mib MiB limit (see the sizes above: $stage)"
fi
mv "$archive.tmp" "$archive"
echo "== $archive: $(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }') (limit $max_mib MiB), needs glibc >= $glibc_needed"
echo "== contents (unpacked sizes):"
(cd "$bundle" && du -s --apparent-size -k bin/* lib tests perf openmpi pmix | sort -rn |
  awk '{ printf "   %8.1f MiB  %s\n", $1 / 1024, $2 }')
echo "   libraries: ${#bundled[@]} in lib/, $mpi_components Open MPI components; found at run time: $(tr '\n' ' ' <"$bundle/share/slearn-bundle/runtime-libs")"
echo "   manifest: slearn-gpu/share/slearn-bundle/manifest.txt"
echo "== build ${build_s}s, packing $((SECONDS - started - build_s))s"

if ((rehearse)); then
  "$root/launch/gpu-bundle/rehearse.sh" "$archive"
fi
