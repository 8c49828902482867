"""Seeded kill-and-resume: a 2-rank `slearn_dist run` (the tiny fixture model judging itself, so that every stage
takes a measurable time) is killed with SIGKILL at random points spread over every stage (eval before, answer,
judge, train, eval after): the victim is rank 0, rank 1 or mpirun, chosen at random, killed after a random
delay once the stage shows in the run directory. After each kill the same command must finish (exit 0) with
every output byte for byte equal to an uninterrupted run's (metrics.jsonl and summary.json without their timing
fields; rank shards, progress files and run.lock left out). Between the kill and the resume, every whole-file
output that is present must already be complete (equal to the reference's).

With TENSOR 2 the two ranks are one tensor group (parallel.tensor=2: each holds half of every layer and of the
LoRA adapter, and they sample, judge and train together): the same kills, the same byte-for-byte resume.

usage: kill_resume.py [BINARY [SEED [KILLS [TENSOR]]]]   (defaults: build/bin/slearn_dist, 20261202, 20, 1)"""
import collections
import json
import os
import random
import signal
import sys
import time

from common import (BINARY, ORDER, STAGES, Job, wait_binary_stable, check, differences, finish, first_difference, keep_reference, progress, ranks,
                    require_binary, rmtree, run, stage_of, strip_timing, tiny_data, tiny_self_command, timing_keys,
                    tree, wait_gone, workdir)

SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 20261202
KILLS = int(sys.argv[3]) if len(sys.argv) > 3 else 20
TENSOR = int(sys.argv[4]) if len(sys.argv) > 4 else 1
rng = random.Random(SEED)
print(f"seed {SEED}, {KILLS} kill points, tensor parallel {TENSOR} (run again with: python3 {sys.argv[0]} BINARY "
      f"{SEED} {KILLS} {TENSOR})", flush=True)
require_binary()

work = workdir("slearn-kill-resume-")
data = os.path.join(work, "data.jsonl")
tiny_data(data, 2)  # 32 records
run_dir = os.path.join(work, "run")
ref_dir = os.path.join(work, "reference")
cmd = tiny_self_command(run_dir, data, eval_records=8,
                        extra=("--set", f"parallel.tensor={TENSOR}") if TENSOR > 1 else ())
print("command:", " ".join(cmd), flush=True)

# Whole files written atomically: after a kill each is absent or complete (docs/stopping.md).
WHOLE = ["answers.jsonl", "judgements.jsonl", "incorrect.jsonl", "summary.json", "run.json", "run_config.yaml",
         "train_config.yaml", "eval-before/answers.jsonl", "eval-before/judgements.jsonl", "eval-after/answers.jsonl",
         "eval-after/judgements.jsonl", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"]


def watch_reference():
    """The uninterrupted run, watched: when each stage first shows."""
    for attempt in range(5):
        rmtree(run_dir)
        job = Job(cmd)
        seen = {}
        while job.poll() is None:
            s = stage_of(run_dir)
            seen.setdefault(s, time.time() - job.started)
            time.sleep(0.002)
        seen.setdefault(stage_of(run_dir), time.time() - job.started)
        seen["exit"] = time.time() - job.started
        res = job.result()
        if not job.launch_failed(res):
            break
        wait_binary_stable()
    return res, seen


try:
    progress("uninterrupted reference run")
    ref, seen = watch_reference()
    ref_tree = keep_reference(ref, run_dir, ref_dir)
    with open(os.path.join(ref_dir, "summary.json")) as f:
        summary_timing = timing_keys(json.load(f))
    with open(os.path.join(ref_dir, "metrics.jsonl")) as f:
        metrics_timing = timing_keys(json.loads(f.readline()))
    print(f"reference: {ref.seconds:.1f} s; stages first seen at " +
          ", ".join(f"{s} {t:.2f} s" for s, t in seen.items()), flush=True)
    print(f"timing fields left out: metrics.jsonl {metrics_timing}, summary.json {summary_timing}", flush=True)
    print(f"compared files: {len(ref_tree)} ({', '.join(sorted(ref_tree))})", flush=True)
    # How long each stage lasts (until the next shows), to spread the delays over it.
    duration = {}
    for i, s in enumerate(STAGES):
        nxt = next((seen[t] for t in ORDER[ORDER.index(s) + 1:] if t in seen), seen["exit"])
        duration[s] = max(0.02, nxt - seen.get(s, nxt))
    reference_metrics = [strip_timing(json.loads(l)) for l in open(os.path.join(ref_dir, "metrics.jsonl"))]

    targets = [STAGES[i % len(STAGES)] for i in range(KILLS)]
    rng.shuffle(targets)
    plan = [(t, rng.choice(["rank 0", "rank 1", "mpirun"]), rng.uniform(0.0, 0.6 * duration[t])) for t in targets]
    landed = collections.Counter()
    by_victim = collections.Counter()
    table = []
    i = 0
    while i < len(plan):
        target, victim, delay = plan[i]
        rmtree(run_dir)
        job = Job(cmd)
        deadline = time.time() + 300
        pids = {}
        while job.poll() is None and time.time() < deadline:
            pids = ranks(job.pid) or pids
            if ORDER.index(stage_of(run_dir)) >= ORDER.index(target):
                break
            time.sleep(0.002)
        time.sleep(delay)
        pids = ranks(job.pid) or pids
        where = stage_of(run_dir)
        sent = False
        if job.poll() is not None:
            where = "finished"
        else:
            pid = job.pid if victim == "mpirun" else pids.get(int(victim[-1]))
            try:
                os.kill(pid, signal.SIGKILL)
                sent = True
            except (TypeError, ProcessLookupError):
                where = "finished"  # the rank had already exited
        if where == "done":
            where = "finished"
        killed_at = time.time()
        code = job.wait(60)
        ended = time.time() - killed_at
        gone = wait_gone(list(pids.values()), 60, sid=job.pid)
        res = job.result()
        if not sent and job.launch_failed(res):
            print(f"[test: {BINARY} could not be started (being rebuilt?); waiting, then kill {i + 1} again]",
                  flush=True)
            wait_binary_stable()
            continue
        check(code is not None and gone, f"kill {i + 1} ({victim} in {where}): the job ends within 60 s "
                                         f"(mpirun exit {code}, ranks gone: {gone})")
        if not sent:
            check(code == 0, f"kill {i + 1}: the run that ended before the kill exits 0 (exit {code}: {res.tail()})")
        if sent and victim == "mpirun" and where in ("eval-before", "answer", "judge", "train"):
            # A rank outliving its launcher would go on to finish the run (summary.json) as an orphan, and
            # could still be writing when the next attempt starts (src/util/launcher.hpp).
            check(not os.path.exists(os.path.join(run_dir, "summary.json")),
                  f"kill {i + 1} (mpirun in {where}): the ranks ended with mpirun, not going on to finish the run")
        landed[where] += 1
        by_victim[victim] += 1
        # Whole files are complete or absent; metrics.jsonl a prefix of the reference's (a torn last line aside).
        partial = []
        for rel in WHOLE:
            p = os.path.join(run_dir, rel)
            if os.path.exists(p):
                with open(p, "rb") as f, open(os.path.join(ref_dir, rel), "rb") as g:
                    a, b = f.read(), g.read()
                same = a == b
                if rel == "summary.json" and not same:
                    try:
                        same = strip_timing(json.loads(a)) == strip_timing(json.loads(b))
                    except ValueError:
                        pass
                if not same:
                    partial.append(rel)
        p = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(p):
            lines = open(p, "rb").read().split(b"\n")
            try:
                got = [strip_timing(json.loads(l)) for l in lines[:-1]]
                if got != reference_metrics[:len(got)]:
                    partial.append("metrics.jsonl (not a prefix of the reference's)")
            except ValueError:
                partial.append("metrics.jsonl (a complete line that does not parse)")
        check(not partial, f"kill {i + 1} ({victim} in {where}): files present after the kill are complete "
                           f"(incomplete or different: {partial})")
        again = run(cmd)
        ok = check(again.code == 0, f"kill {i + 1} ({victim} in {where}, delay {delay:.3f} s): the same command "
                                    f"again exits 0 (exit {again.code}: {again.tail()})")
        diffs = differences(run_dir, ref_dir, ref_tree) if ok else ["(not compared)"]
        details = [f"{d}: {first_difference(os.path.join(run_dir, d[:-8]), os.path.join(ref_dir, d[:-8]))}"
                   if d.endswith(" differs") and not d[:-8].endswith(("metrics.jsonl", "summary.json")) else d
                   for d in diffs]
        check(not diffs, f"kill {i + 1} ({victim} in {where}): outputs equal the uninterrupted run's ({details})")
        row = (f"{i + 1:2d}  target {target:11s} delay {delay:5.3f} s  {victim:6s} killed in {where:11s} "
               f"exit {code} after {ended:4.1f} s  resume exit {again.code} in {again.seconds:4.1f} s  "
               f"{'same outputs' if not diffs else 'DIFFERS: ' + ', '.join(diffs)}")
        print(row, flush=True)
        table.append(row)
        i += 1

    print("\nkills per stage: " + ", ".join(f"{s} {landed[s]}" for s in STAGES + ["finished"]) +
          "   per victim: " + ", ".join(f"{v} {n}" for v, n in sorted(by_victim.items())), flush=True)
    for s in STAGES:
        check(landed[s] > 0, f"some kill landed in stage {s} (seed {SEED})")
finally:
    rmtree(work)
finish()
