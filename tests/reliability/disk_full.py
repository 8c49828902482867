"""A full disk: the run directory of a 2-rank demo run on a small tmpfs that fills while it trains (checkpoints of
~3 MB), while it answers, and while it judges (a few KiB of shards and merged files). The run must exit
non-zero (not 0) with exactly one `slearn_dist:` line, `slearn_dist: error: ...` (mpirun's own notes are not
counted), and no Python traceback. Then the tmpfs is remounted bigger and the same command must finish with
the outputs of an uninterrupted run (run.json fingerprints hold run_dir, so the run cannot move elsewhere).
Needs root and tmpfs mounts; otherwise it prints SKIP and exits 77.

usage: disk_full.py [BINARY]"""
import os
import subprocess
import sys

from common import (SKIP, check, demo_command, differences, finish, first_difference, keep_reference, progress, require_binary,
                    rmtree, run, stage_of, tree, workdir)

require_binary()
work = workdir("slearn-disk-full-")
mnt = os.path.join(work, "mnt")
os.makedirs(mnt)
mounted = False


def mount(size):
    global mounted
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], capture_output=True, text=True)
    if done.returncode == 0:
        mounted = True
    return done


def remount(size):
    return subprocess.run(["mount", "-o", f"remount,size={size}", mnt], capture_output=True, text=True)


def umount():
    global mounted
    if mounted:
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        mounted = False


if os.geteuid() != 0:
    print("SKIP: cannot mount a tmpfs here (not root)")
    rmtree(work)
    sys.exit(SKIP)
try:
    done = mount("6m")
except OSError as e:
    done = subprocess.CompletedProcess([], 1, "", str(e))
if done.returncode != 0:
    print(f"SKIP: cannot mount a tmpfs here ({(done.stderr or done.stdout).strip() or 'mount failed'})")
    rmtree(work)
    sys.exit(SKIP)
umount()

# (what, the sizes to try in turn, the stages where it may fill)
SCENARIOS = [("training", ["6m", "5m", "7m", "8m", "4m"], {"train"}),
             ("answering", ["40k", "44k", "36k", "48k", "32k", "56k"], {"answer"}),
             ("judging", ["64k", "60k", "68k", "72k", "56k"], {"judge"})]

try:
    run_dir = os.path.join(mnt, "run")
    ref_dir = os.path.join(work, "reference")
    cmd = demo_command(run_dir)
    progress("uninterrupted reference (on the plain disk, same path)")
    ref_tree = keep_reference(run(cmd), run_dir, ref_dir)
    for what, sizes, stages in SCENARIOS:
        progress(f"the disk fills while {what}")
        found = False
        for size in sizes:
            if mount(size).returncode != 0:
                check(False, f"mount a {size} tmpfs")
                break
            try:
                full = run(cmd, timeout=240)
                where = stage_of(run_dir)
                text = full.out + "\n" + full.err
                print(f"  tmpfs {size}: exit {full.code} in stage {where}; lines {full.said}", flush=True)
                if full.code == 0:
                    continue  # it fit: try the next size
                if where not in stages:
                    continue  # it filled elsewhere: try the next size
                found = True
                said = full.said
                check(len(said) == 1 and said[0].startswith("slearn_dist: error:") and said[0].count("slearn_dist:") == 1,
                      f"disk full while {what} (tmpfs {size}): exactly one 'slearn_dist: error:' line (exit "
                      f"{full.code}; lines {said}; output {full.tail(600)})")
                check("Traceback" not in text, f"disk full while {what}: no Python traceback ({full.tail(600)})")
                done = remount("64m")
                if not check(done.returncode == 0, f"remount the tmpfs at 64m ({done.stderr.strip()})"):
                    break
                again = run(cmd, timeout=240)
                ok = check(again.code == 0, f"disk full while {what} (tmpfs {size}), remounted bigger: the same "
                                            f"command finishes (exit {again.code}: {again.tail(600)})")
                diffs = differences(run_dir, ref_dir, ref_tree) if ok else []
                detail = [f"{d} ({first_difference(os.path.join(run_dir, d[:-8]), os.path.join(ref_dir, d[:-8]))})"
                          if d.endswith(" differs") else d for d in diffs]
                check(not diffs, f"disk full while {what} (tmpfs {size}), resumed: outputs equal the uninterrupted "
                                 f"run's ({detail})")
                print(f"  resumed on 64m: exit {again.code} in {again.seconds:.1f} s, "
                      f"{'same outputs' if ok and not diffs else 'DIFFERS: ' + str(detail)}", flush=True)
                break
            finally:
                umount()
        check(found, f"some tmpfs size of {sizes} fills while {what} (stages {sorted(stages)})")
finally:
    umount()
    rmtree(work)
finish()
