"""One run directory, several runs: (a) two identical 2-rank `slearn_dist run` started at the same moment on one
run_dir: exactly one exits 0, the other exits 2 with one line saying the run_dir "is in use by another run" and
naming the host and pid of the winner; the winner's outputs equal an uninterrupted run's, each record once.
(b) A stale lock: a run killed with SIGKILL leaves run.lock behind; the same command again is not blocked and
ends equal to the reference. (c) The same two for `slearn_dist train`.

usage: concurrency.py [BINARY]"""
import json
import re
import os
import signal
import socket
import time

from common import (BINARY, ROOT, TRAIN_TINY, Job, check, demo_command, differences, finish, first_difference, keep_reference,
                    progress, ranks, require_binary, rmtree, run, tree, wait_gone, workdir)

require_binary()
work = workdir("slearn-concurrency-")
HOST = socket.gethostname()


def report_diffs(run_dir, ref_dir, ref_tree, what):
    diffs = differences(run_dir, ref_dir, ref_tree)
    detail = [f"{d} ({first_difference(os.path.join(run_dir, d[:-8]), os.path.join(ref_dir, d[:-8]))})"
              if d.endswith(" differs") else d for d in diffs]
    check(not diffs, f"{what}: outputs equal the uninterrupted run's ({detail})")


def ids(path):
    with open(path) as f:
        return [json.loads(l)["id"] for l in f if l.strip()]


def each_once(run_dir, ref_dir, what, merged):
    for rel in merged:
        p, r = os.path.join(run_dir, rel), os.path.join(ref_dir, rel)
        if not os.path.exists(r):
            continue
        got = ids(p) if os.path.exists(p) else []
        check(len(got) == len(set(got)) and sorted(got) == sorted(ids(r)),
              f"{what}: every record of {rel} appears exactly once ({len(got)} lines, {len(set(got))} ids)")
    for sub in ("", "eval-before", "eval-after"):
        d = os.path.join(run_dir, sub)
        if not os.path.isdir(d):
            continue
        for kind in ("answers", "judgements"):
            seen = []
            for f in sorted(os.listdir(d)):
                if f.startswith(kind + ".rank-") and f.endswith(".jsonl"):
                    with open(os.path.join(d, f)) as shard:
                        seen += [json.loads(l)["id"] for l in shard.read().split("\n")[:-1] if l.strip()]
            if seen:
                check(len(seen) == len(set(seen)), f"{what}: no id written twice in {sub or '.'}/{kind}.rank-*.jsonl "
                                                   f"({len(seen) - len(set(seen))} duplicates)")
    p = os.path.join(run_dir, "metrics.jsonl")
    steps = [json.loads(l)["step"] for l in open(p)] if os.path.exists(p) else []
    ref_steps = [json.loads(l)["step"] for l in open(os.path.join(ref_dir, "metrics.jsonl"))]
    check(steps == ref_steps, f"{what}: metrics.jsonl has every step once ({steps} vs {ref_steps})")


def two_at_once(cmd, run_dir, ref_dir, ref_tree, what, merged, mpi):
    rmtree(run_dir)
    jobs = [Job(cmd), Job(cmd)]
    pids = [{j.pid} for j in jobs]
    deadline = time.time() + 300
    while any(j.poll() is None for j in jobs) and time.time() < deadline:
        if mpi:
            for j, p in zip(jobs, pids):
                p.update(ranks(j.pid).values())
        time.sleep(0.005)
    codes = [j.wait(5) for j in jobs]
    results = [j.result() for j in jobs]
    print(f"{what}: exits {codes} after {[round(r.seconds, 1) for r in results]} s; lines "
          f"{[r.said for r in results]}", flush=True)
    winners = [i for i, c in enumerate(codes) if c == 0]
    losers = [i for i, c in enumerate(codes) if c != 0]
    check(len(winners) == 1, f"{what}: exactly one of the two exits 0 (exits {codes}; "
                             f"{' // '.join(r.tail(400) for r in results)})")
    if len(winners) != 1 or len(losers) != 1:
        return
    w, l = winners[0], losers[0]
    said = results[l].said
    line = said[0] if said else ""
    check(codes[l] == 2, f"{what}: the other exits 2 (exit {codes[l]}: {results[l].tail(400)})")
    check(len(said) == 1 and line.startswith("slearn_dist: error:") and "is in use by another run" in line,
          f"{what}: one line saying the run_dir is in use by another run ({said})")
    named = [int(p) for p in re.findall(r"pid (\d+)", line)]
    check(HOST in line and named and named[0] in pids[w],
          f"{what}: the line names the host ({HOST}) and a pid of the winner ({sorted(pids[w])}): {line}")
    report_diffs(run_dir, ref_dir, ref_tree, f"{what}: the winner")
    each_once(run_dir, ref_dir, f"{what}: the winner", merged)


def stale_lock(cmd, run_dir, ref_dir, ref_tree, what, ready, merged, mpi):
    rmtree(run_dir)
    job = Job(cmd)
    pids = set()
    deadline = time.time() + 300
    while job.poll() is None and time.time() < deadline and not ready():
        if mpi:
            pids.update(ranks(job.pid).values())
        time.sleep(0.002)
    killed = job.poll() is None
    if mpi:
        pids.update(ranks(job.pid).values())
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    job.wait(60)
    wait_gone(list(pids), 60, sid=job.pid)
    job.result()
    check(killed, f"{what}: the run was killed in the middle (it had ended before)")
    lock = os.path.join(run_dir, "run.lock")
    holder = open(lock).read().strip() if os.path.exists(lock) else None
    check(holder is not None, f"{what}: the killed run left its run.lock behind")
    print(f"{what}: killed; run.lock holds {holder!r}", flush=True)
    again = run(cmd)
    check(again.code == 0, f"{what}: the same command again is not blocked by the stale lock and finishes "
                           f"(exit {again.code}: {again.tail(400)})")
    if again.code == 0:
        report_diffs(run_dir, ref_dir, ref_tree, what)
        each_once(run_dir, ref_dir, what, merged)


try:
    # ---- slearn_dist run ----
    run_dir = os.path.join(work, "run")
    ref_dir = os.path.join(work, "run-reference")
    cmd = demo_command(run_dir)
    progress("uninterrupted reference: slearn_dist run")
    ref = run(cmd)
    ref_tree = keep_reference(ref, run_dir, ref_dir)
    print(f"reference run: {ref.seconds:.1f} s", flush=True)
    merged = ["answers.jsonl", "judgements.jsonl", "incorrect.jsonl", "eval-before/answers.jsonl",
              "eval-before/judgements.jsonl", "eval-after/answers.jsonl", "eval-after/judgements.jsonl"]
    for attempt in (1, 2):
        progress(f"(a) two runs at once, round {attempt}")
        two_at_once(cmd, run_dir, ref_dir, ref_tree, f"(a) two runs at once, round {attempt}", merged, mpi=True)
    progress("(b) a stale lock: a run killed in training, then run again")
    stale_lock(cmd, run_dir, ref_dir, ref_tree, "(b) stale lock (run)",
               lambda: os.path.exists(os.path.join(run_dir, "metrics.jsonl")), merged, mpi=True)

    # ---- slearn_dist train ----
    train_dir = os.path.join(work, "train")
    train_ref = os.path.join(work, "train-reference")
    train_cmd = [BINARY, "train", "--config", TRAIN_TINY, "--set", f"run_dir={train_dir}",
                 "--set", f"model={os.path.join(ROOT, 'tests', 'fixtures', 'models', 'qwen2-gqa-tied')}",
                 "--set", f"data.path={os.path.join(ROOT, 'tests', 'fixtures', 'data', 'medquad-tiny.jsonl')}",
                 "--set", "train.epochs=4", "--quiet"]
    progress("uninterrupted reference: slearn_dist train")
    ref = run(train_cmd)
    if check(ref.code == 0, f"the uninterrupted train finishes (exit {ref.code}: {ref.tail()})"):
        print(f"reference train: {ref.seconds:.1f} s", flush=True)
        os.rename(train_dir, train_ref)
        train_tree = tree(train_ref)
        for attempt in (1, 2):
            progress(f"(c) two trains at once, round {attempt}")
            two_at_once(train_cmd, train_dir, train_ref, train_tree, f"(c) two trains at once, round {attempt}", [],
                        mpi=False)

        def some_steps():
            try:
                with open(os.path.join(train_dir, "metrics.jsonl"), "rb") as f:
                    return f.read().count(b"\n") >= 5
            except OSError:
                return False
        progress("(c) a stale lock: a train killed in the middle, then run again")
        stale_lock(train_cmd, train_dir, train_ref, train_tree, "(c) stale lock (train)", some_steps, [], mpi=False)
finally:
    rmtree(work)
finish()
