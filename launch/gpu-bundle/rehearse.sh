#!/usr/bin/env bash
# launch/gpu-bundle/rehearse.sh ARCHIVE: runs the GPU bundle (launch/gpu-bundle.sh) in a bare Debian chroot,
# as the GPU machine would, before it travels there. Needs root (debootstrap, chroot, mount) and the local
# CUDA toolkit (to play the machine's CUDA libraries). No GPU is needed: the GPU tests skip.
#
# The chroots: `debootstrap --variant=minbase bookworm`, cached under $SLEARN_CHROOT_CACHE (default
# /var/tmp/slearn-chroot) and copied fresh for each rehearsal; the mirror is apt's own (its sources), or
# $SLEARN_DEBIAN_MIRROR. None of the project's dependencies is installed in them. Two machines are simulated:
#   toolkit  the machine's CUDA toolkit: the bundle's runtime libraries (cudart, cuBLAS/cuBLASLt, NCCL) copied
#            from this machine's toolkit to the same places under /usr/local/cuda-13.0 in the chroot, with
#            /usr/local/cuda linked to it. Everything is checked here: the loader resolves every library of
#            every program and component inside the bundle (or glibc, or the simulated CUDA libraries);
#            slearn_gpu_tests runs with all GPU tests skipped and none failed; slearn_dist generate on the
#            three fixture models gives transformers' greedy ids (tests/fixtures/golden), and a text prompt
#            through the tokenizer; slearn_dist run (MPI_Init as a singleton) finishes the tiny pipeline;
#            every bench_gpu_* answers --help.
#   python   the machine's pip packages: a second minbase tree with python3-minimal, the same libraries under
#            /usr/local/lib/python3.11/dist-packages/nvidia/{cu13,nccl}/lib and no toolkit. Checked: the
#            wrapper refuses to start while the libraries are absent, naming them; once they are there it
#            finds them through python3, and slearn_gpu_tests and generate run.
# The NVIDIA driver is absent from both: the CUDA backend reports no device, as on a machine without a GPU.
set -euo pipefail

archive="$(readlink -f "${1:?usage: rehearse.sh ARCHIVE}")"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${SLEARN_CHROOT_CACHE:-/var/tmp/slearn-chroot}"
suite=bookworm
say() { echo "rehearse: $*" >&2; }
die() { echo "rehearse: error: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "needs root (debootstrap, chroot, mount)"
[[ -f "$archive" ]] || die "no archive $archive"
command -v python3 >/dev/null || die "python3 is needed here to check the outputs"

results=()
failed=0
# record NAME SECONDS OK DETAIL
record() {
  results+=("$(printf '%-4s %-44s %6.1fs  %s' "$([[ $3 == 1 ]] && echo PASS || echo FAIL)" "$1" "$2" "$4")")
  [[ $3 == 1 ]] || failed=1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- the cached base trees ----
debian_mirror() {
  if [[ -n "${SLEARN_DEBIAN_MIRROR:-}" ]]; then echo "$SLEARN_DEBIAN_MIRROR"; return; fi
  local uri
  # deb822 sources first (Debian 12's default), then one-line sources: the first main archive URI.
  uri="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
  [[ -z "$uri" ]] && uri="$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep '/debian/\?$' | head -1)"
  echo "${uri:-http://deb.debian.org/debian}"
}
# base_tree NAME [PACKAGES]: sets $base to a cached minbase tree (made on first use). (Not called in $(...):
# it records a result.)
base_tree() {
  local tree="$cache/$suite-$1" include="${2:-}"
  if [[ ! -f "$tree/.slearn-complete" ]]; then
    if ! command -v debootstrap >/dev/null; then
      say "installing debootstrap"
      apt-get install -y -q debootstrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
    fi
    local mirror t0
    mirror="$(debian_mirror)"
    t0="$(now)"
    say "debootstrap --variant=minbase ${include:+--include=$include }$suite from $mirror (once; cached in $tree)"
    rm -rf "$tree.tmp"
    mkdir -p "$cache"
    debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$tree.tmp" "$mirror" >"$cache/debootstrap-$1.log" 2>&1 ||
      die "debootstrap failed: $cache/debootstrap-$1.log"
    touch "$tree.tmp/.slearn-complete"
    rm -rf "$tree"
    mv "$tree.tmp" "$tree"
    record "debootstrap $1 (cached for later runs)" "$(since "$t0")" 1 "$(du -sh "$tree" | cut -f1)"
  fi
  base="$tree"
}

# ---- one fresh chroot per rehearsal ----
mounted=()
trees=()
cleanup() {
  local t i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true; done
  for t in "${trees[@]}"; do
    [[ -n "$t" ]] || continue
    # Only trees with nothing mounted inside are removed (never follow a mount out of the tree).
    if ! grep -q " $t/" /proc/mounts; then rm -rf --one-file-system "$t"; else say "left $t (still mounted)"; fi
  done
}
trap cleanup EXIT
# fresh_tree BASE NAME: sets $tree to a copy of BASE with /proc, /sys and a private /dev/shm mounted, and the
# bundle unpacked in /opt/slearn-gpu.
fresh_tree() {
  local t0
  tree="$cache/rehearsal-$2-$$"
  rm -rf "$tree"
  cp -a "$1" "$tree"
  trees+=("$tree")
  mount -t proc proc "$tree/proc" && mounted+=("$tree/proc")
  mount -t sysfs sysfs "$tree/sys" 2>/dev/null && mounted+=("$tree/sys") || say "no sysfs in the chroot (hwloc sees less)"
  mkdir -p "$tree/dev/shm"
  mount -t tmpfs -o size=256m tmpfs "$tree/dev/shm" && mounted+=("$tree/dev/shm")
  t0="$(now)"
  tar -xJf "$archive" -C "$tree/opt"
  record "unpack in the $2 chroot" "$(since "$t0")" 1 "$(du -sh --apparent-size "$tree/opt/slearn-gpu" | cut -f1) unpacked"
}
# in_chroot TREE SCRIPT: runs a bash script in the chroot with a clean environment, from /opt/slearn-gpu.
in_chroot() {
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TMPDIR=/tmp \
    chroot "$1" /bin/bash -c "cd /opt/slearn-gpu && $2"
}

# The CUDA libraries the bundle needs, and where this machine's toolkit has them.
runtime_libs="$(tar -xJf "$archive" -O slearn-gpu/share/slearn-bundle/runtime-libs)"
toolkit="$(readlink -f /usr/local/cuda)"
declare -A toolkit_path=()
for soname in $runtime_libs; do
  for sub in lib64 lib targets/x86_64-linux/lib; do
    if [[ -e "$toolkit/$sub/$soname" ]]; then toolkit_path[$soname]="$sub/$soname"; break; fi
  done
  [[ -n "${toolkit_path[$soname]:-}" ]] || die "$soname is not in the local toolkit $toolkit: cannot simulate the machine"
done
# on_host ARGS: when a program fails in the chroot, the same slearn_dist command with the build tree's binary
# here tells a bug of the program (fails here too) from one of the bundle (passes here). Prints a note.
host_binary="$root/build-bundle/bin/slearn_dist"
on_host() {
  [[ -x "$host_binary" ]] || return 0
  local code=0
  (cd "$root" && "$host_binary" "$@" >/dev/null 2>"$work/host.err") || code=$?
  if ((code == 0)); then echo " [passes outside the chroot: a bundle problem]"
  else echo " [fails outside the chroot too (exit $code: $(tail -c 200 "$work/host.err" | tr '\n' ' ')): a program bug]"; fi
}
# place_lib SOURCE DEST: a hard link where possible (same file system), else a copy.
place_lib() { mkdir -p "$(dirname "$2")"; ln -f "$1" "$2" 2>/dev/null || cp "$1" "$2"; }

# ---- rehearsal 1: the toolkit machine ----
base_tree minbase
fresh_tree "$base" toolkit
for soname in $runtime_libs; do
  place_lib "$(readlink -f "$toolkit/${toolkit_path[$soname]}")" "$tree/usr/local/cuda-13.0/${toolkit_path[$soname]}"
done
ln -sfn cuda-13.0 "$tree/usr/local/cuda"
work="$cache/rehearsal-out-$$"
mkdir -p "$work"
trees+=("$work")

t0="$(now)"
if in_chroot "$tree" './run --check' >"$work/check.log" 2>&1; then ok=1; else ok=0; fi
record "run --check finds the CUDA libraries" "$(since "$t0")" "$ok" "$(grep -c 'CUDA toolkit' "$work/check.log") from the toolkit"
sed 's/^/    /' "$work/check.log" >&2

# Every library of every program and component resolves inside the bundle, to glibc, or to the CUDA libraries.
t0="$(now)"
in_chroot "$tree" 'source ./env.sh 2>/dev/null; for f in bin/* lib/openmpi3/*.so lib/pmix/*.so; do ldd "$f" | sed "s|^|$f |"; done' >"$work/ldd.log" 2>&1 || true
python3 - "$work/ldd.log" "$runtime_libs" >"$work/ldd-audit.log" <<'PY' && ok=1 || ok=0
import os, re, sys
lines = open(sys.argv[1]).read().splitlines()
runtime = set(sys.argv[2].split())
glibc = re.compile(r"^(ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libmvec\.so\.1|libpthread\.so\.0|libdl\.so\.2|"
                   r"librt\.so\.1|libresolv\.so\.2|libutil\.so\.1|libanl\.so\.1|libnsl\.so\.1|linux-vdso\.so\.1)$")
bad, files, libs = [], set(), 0
for line in lines:
    parts = line.split()
    if len(parts) < 2:
        continue
    f, name = parts[0], parts[1].split("/")[-1]
    files.add(f)
    target = os.path.normpath(parts[3] if len(parts) > 3 and parts[2] == "=>" else parts[1])
    libs += 1
    if "not found" in line:
        bad.append(f"{f}: {name} not found")
    elif name in runtime:
        if not target.startswith("/usr/local/cuda"):
            bad.append(f"{f}: {name} from {target}, not the simulated toolkit")
    elif glibc.match(name):
        if target.startswith("/opt/"):
            bad.append(f"{f}: glibc's {name} from the bundle")
    elif not target.startswith("/opt/slearn-gpu/lib/"):
        bad.append(f"{f}: {name} from {target}, outside the bundle")
print(f"{len(files)} files, {libs} resolutions")
for b in bad:
    print(b)
sys.exit(1 if bad or not files else 0)
PY
record "ldd: every library inside the bundle" "$(since "$t0")" "$ok" "$(head -1 "$work/ldd-audit.log")"
((ok)) || sed -n '2,20p' "$work/ldd-audit.log" | sed 's/^/    /' >&2

t0="$(now)"
set +e
in_chroot "$tree" './run slearn_gpu_tests' >"$work/gpu-tests.log" 2>&1
code=$?
set -e
python3 - "$work/gpu-tests.log" "$code" >"$work/gpu-tests.summary" <<'PY' && ok=1 || ok=0
import re, sys
text, code = open(sys.argv[1]).read(), int(sys.argv[2])
ran = re.search(r"\[==========\] (\d+) tests? from \d+ test suites? ran", text)
passed = re.search(r"\[  PASSED  \] (\d+) test", text)
skipped = re.search(r"\[  SKIPPED \] (\d+) test", text)
failed = "[  FAILED  ]" in text
n, p, s = (int(m.group(1)) if m else 0 for m in (ran, passed, skipped))
print(f"exit {code}: {n} tests, {s} skipped, {p} passed, {'FAILURES' if failed else 'no failures'}")
# gtest counts skipped tests outside PASSED; main.cpp exits 77 when every test skipped.
ok = n > 0 and not failed and ((code == 77 and s == n) or (code == 0 and p + s == n))
sys.exit(0 if ok else 1)
PY
record "slearn_gpu_tests: GPU tests skip, none fail" "$(since "$t0")" "$ok" "$(cat "$work/gpu-tests.summary")"
((ok)) || tail -30 "$work/gpu-tests.log" | sed 's/^/    /' >&2

# generate on the fixture models: transformers' greedy ids (tests/cli/test_generate_cli.py does the same).
for model in qwen2-gqa-tied qwen2-untied-theta1e6 llama-bf16; do
  golden="$root/tests/fixtures/golden/$model/golden.json"
  args="$(python3 -c 'import json, sys; print(" ".join("--prompt-ids " + ",".join(map(str, p)) for p in json.load(open(sys.argv[1]))["prompts"]))' "$golden")"
  t0="$(now)"
  set +e
  in_chroot "$tree" "./run slearn_dist generate --model tests/fixtures/models/$model --max-new-tokens 32 --ignore-eos --batch-size 2 --quiet $args" \
    >"$work/generate-$model.out" 2>"$work/generate-$model.err"
  code=$?
  set -e
  python3 - "$work/generate-$model.out" "$golden" "$code" >"$work/generate-$model.summary" <<'PY' && ok=1 || ok=0
import json, sys
out, golden, code = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
lines = [json.loads(l) for l in open(out) if l.strip()]
same = sum(1 for l, want in zip(lines, golden["greedy"]) if l["ids"] == want)
print(f"exit {code}: {same} of {len(golden['greedy'])} prompts give transformers' greedy ids")
sys.exit(0 if code == 0 and len(lines) == len(golden["greedy"]) == same else 1)
PY
  note=""
  ((ok)) || note="$(on_host generate --model "tests/fixtures/models/$model" --max-new-tokens 32 --ignore-eos --batch-size 2 --quiet $args)"
  record "generate $model (cpu backend)" "$(since "$t0")" "$ok" "$(cat "$work/generate-$model.summary")$note"
  ((ok)) || tail -5 "$work/generate-$model.err" | sed 's/^/    /' >&2
done

t0="$(now)"
set +e
in_chroot "$tree" './run slearn_dist generate --model tests/fixtures/models/qwen2-gqa-tied --prompt "What is anemia?" --prompt "高血压" --chat --max-new-tokens 8' \
  >"$work/generate-text.out" 2>"$work/generate-text.err"
code=$?
set -e
python3 - "$work/generate-text.out" "$code" >"$work/generate-text.summary" <<'PY' && ok=1 || ok=0
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
good = [l for l in lines if 1 <= len(l["ids"]) <= 8 and isinstance(l.get("text"), str)]
print(f"exit {sys.argv[2]}: {len(good)} of 2 replies with ids and text")
sys.exit(0 if sys.argv[2] == "0" and len(lines) == len(good) == 2 else 1)
PY
record "generate text prompts (tokenizer, chat)" "$(since "$t0")" "$ok" "$(cat "$work/generate-text.summary"); $(grep -oE '[0-9.]+ generated tok/s' "$work/generate-text.err" | head -1)"

# The whole pipeline, MPI_Init as a singleton: Open MPI relocated into the bundle, no mpirun, no orted.
t0="$(now)"
set +e
in_chroot "$tree" './run slearn_dist run --config tests/fixtures/pipeline-tiny.yaml --set run_dir=/tmp/pipeline-tiny --quiet' \
  >"$work/pipeline.log" 2>&1
code=$?
set -e
python3 - "$tree/tmp/pipeline-tiny" "$code" "$work/pipeline.log" >"$work/pipeline.summary" <<'PY' && ok=1 || ok=0
import json, os, sys
d, code = sys.argv[1], int(sys.argv[2])
try:
    s = json.load(open(os.path.join(d, "summary.json")))
except OSError:
    s = {}
adapter = os.path.exists(os.path.join(d, "adapter", "adapter_model.safetensors"))
print(f"exit {code}: world_size {s.get('world_size')}, {s.get('records')} records, trained on {s.get('trained_on')}, "
      f"adapter {'written' if adapter else 'MISSING'}")
# Open MPI prints its complaints (a component it cannot open, a help text it cannot find) between rules of dashes.
log = open(sys.argv[3], errors="replace").read()
noise = [w for w in ("mca_base_component_repository_open", "-----------------------------------", "orted")
         if w in log]
if noise:
    print(f"Open MPI complained: {', '.join(noise)}")
sys.exit(0 if code == 0 and s.get("world_size") == 1 and adapter and not noise else 1)
PY
note=""
((ok)) || note="$(on_host run --config tests/fixtures/pipeline-tiny.yaml --set "run_dir=$work/host-pipeline" --quiet)"
record "slearn_dist run (MPI singleton, tiny pipeline)" "$(since "$t0")" "$ok" "$(cat "$work/pipeline.summary")$note"
((ok)) || tail -20 "$work/pipeline.log" | sed 's/^/    /' >&2

for bench in $(cd "$tree/opt/slearn-gpu/bin" && ls bench_gpu_* 2>/dev/null); do
  t0="$(now)"
  if in_chroot "$tree" "./run $bench --help" >"$work/$bench.log" 2>&1; then ok=1; else ok=0; fi
  record "$bench --help" "$(since "$t0")" "$ok" "$(wc -l <"$work/$bench.log") lines"
  ((ok)) || tail -5 "$work/$bench.log" | sed 's/^/    /' >&2
done

# ---- rehearsal 2: the pip-packages machine ----
base_tree minbase-python python3-minimal
fresh_tree "$base" python
t0="$(now)"
set +e
in_chroot "$tree" './run --check' >"$work/py-missing.log" 2>&1
code=$?
set -e
if [[ $code -ne 0 ]] && grep -q "not found: .*libcudart" "$work/py-missing.log"; then ok=1; else ok=0; fi
record "without CUDA libraries: a clear refusal" "$(since "$t0")" "$ok" "exit $code: not found: $(sed -n 's/.*error: not found: \(.*\)\. Looked in.*/\1/p' "$work/py-missing.log")"
site="$tree/usr/local/lib/python3.11/dist-packages/nvidia"
for soname in $runtime_libs; do
  case "$soname" in libnccl*) pkg=nccl ;; *) pkg=cu13 ;; esac
  place_lib "$(readlink -f "$toolkit/${toolkit_path[$soname]}")" "$site/$pkg/lib/$soname"
done
t0="$(now)"
if in_chroot "$tree" './run --check' >"$work/py-check.log" 2>&1; then ok=1; else ok=0; fi
found="$(grep -c 'python3 nvidia package' "$work/py-check.log" || true)"
[[ "$found" -eq $(wc -w <<<"$runtime_libs") ]] || ok=0
record "run --check finds them through python3" "$(since "$t0")" "$ok" "$found of $(wc -w <<<"$runtime_libs") from python3's nvidia packages"
sed 's/^/    /' "$work/py-check.log" >&2
t0="$(now)"
set +e
in_chroot "$tree" './run slearn_gpu_tests' >"$work/py-gpu-tests.log" 2>&1
code=$?
in_chroot "$tree" "./run slearn_dist generate --model tests/fixtures/models/qwen2-gqa-tied --prompt-ids 1,2,3 --max-new-tokens 4 --quiet" \
  >"$work/py-generate.out" 2>&1
code2=$?
set -e
if [[ $code -eq 77 || $code -eq 0 ]] && ! grep -q '\[  FAILED  \]' "$work/py-gpu-tests.log" && [[ $code2 -eq 0 ]] &&
  grep -q '"ids"' "$work/py-generate.out"; then ok=1; else ok=0; fi
record "slearn_gpu_tests and generate (pip libraries)" "$(since "$t0")" "$ok" "tests exit $code, generate exit $code2"

echo "== rehearsal of $(basename "$archive") ($(awk -v s="$(stat -c %s "$archive")" 'BEGIN { printf "%.1f MiB", s / 1048576 }'))"
printf '%s\n' "${results[@]}"
if ((failed)); then echo "== REHEARSAL FAILED (logs: $work, kept)"; trees=("${trees[@]/$work/}"); exit 1; fi
echo "== rehearsal passed"
