"""Damaged run directories: copies of a completed 2-rank demo run (and of one killed with SIGKILL in the middle of
training) have one file damaged each (torn, garbled, truncated to zero, deleted; for rank shards also a line
that parses but lacks its fields or has a field of the wrong type; stale temporaries added), then the same
command runs again. The oracle, for every case:
  - redone: exit 0 and every compared output equal to the uninterrupted run's (metrics.jsonl and summary.json
    without their timing fields; rank shards, progress files and run.lock left out), or
  - refused: exit 2, exactly one `slearn_dist:` line, `slearn_dist: error: ...` naming the damaged file, and the
    run directory otherwise unchanged (every file byte for byte; run.lock aside).
Anything else fails: exit 0 with different outputs, exit 1, several lines, a changed directory after a refusal.

usage: corruption.py [BINARY]   env SLEARN_RELIABILITY_JOBS (cases run at once, default 2),
                                SLEARN_CORRUPTION_FULL=0 (each shard damage on one rank only, alternating: faster)"""
import concurrent.futures
import json
import os
import queue
import shutil
import signal
import time

from common import (Job, check, demo_command, differences, finish, first_difference, keep_reference, progress, raw_tree,
                    ranks, require_binary, rmtree, run, tree, wait_gone, workdir)

JOBS = int(os.environ.get("SLEARN_RELIABILITY_JOBS", "2"))
FULL = os.environ.get("SLEARN_CORRUPTION_FULL", "1") != "0"
require_binary()
work = workdir("slearn-corruption-")
# Every run uses run_dir "run", relative to its own slot directory: the configuration text is the same for
# every slot, so a copy of the reference may be resumed in any of them.
slots = [os.path.join(work, f"slot-{i}") for i in range(JOBS)]
for s in slots:
    os.makedirs(s)
cmd = demo_command("run")
print("command (in each slot directory):", " ".join(cmd), flush=True)


# ---- the damages ----
def torn(path):
    with open(path, "rb") as f:
        data = f.read()
    cut = max(1, len(data) // 2)
    while cut < len(data) - 1 and data[cut - 1:cut] == b"\n":  # mid-line, not at a line boundary
        cut += 1
    with open(path, "r+b") as f:
        f.truncate(cut)


def garbled(path):
    size = os.path.getsize(path)
    # big files: 8 KiB of 0x5a in the middle; small ones: a few bytes that are not text (0x5a 0xff 0x00 0x5a)
    junk = b"\x5a" * 8192 if size >= 65536 else b"\x5a\xff\x00\x5a"
    at = max(0, size // 2 - len(junk) // 2)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(junk)


def zero(path):
    with open(path, "r+b") as f:
        f.truncate(0)


def deleted(path):
    os.remove(path)


def _edit_middle_line(path, edit):
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    k = (len(lines) - 1) // 2  # the last element is the empty string after the final newline
    record = json.loads(lines[k])
    lines[k] = json.dumps(edit(record), sort_keys=True, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))


def missing_field(path):
    _edit_middle_line(path, lambda r: {"id": r["id"]})


def wrong_type(path):
    def edit(r):
        for key, value in (("tokens", "two"), ("incorrect", "yes"), ("answer", 42), ("verdict", 7)):
            if key in r:
                r[key] = value
                return r
        raise ValueError(f"no field to retype in {path}")
    _edit_middle_line(path, edit)


DAMAGES = {"torn": torn, "garbled": garbled, "zero": zero, "deleted": deleted}
SHARD_DAMAGES = dict(DAMAGES, **{"missing-field": missing_field, "wrong-type": wrong_type})


def stale(rel, content_from=None, size=None):
    """A stale temporary left by a kill: part of a real file under the temporary's name."""
    def add(run_dir):
        path = os.path.join(run_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = b"{\"id\":\"partial"
        if content_from:
            with open(os.path.join(run_dir, content_from), "rb") as f:
                data = f.read()
            data = data[:size if size is not None else len(data) // 2]
        with open(path, "wb") as f:
            f.write(data)
    return add


# ---- the cases: (name, base, file, damage) ----
def build_cases(complete, midtrain, midtrain_latest):
    cases = []
    for k, stage in enumerate(["eval-before/", "", "eval-after/"]):
        for j, kind in enumerate(["answers", "judgements"]):
            for i, (dname, damage) in enumerate(SHARD_DAMAGES.items()):
                for rank in ((0, 1) if FULL else ((i + j + k) % 2,)):
                    rel = f"{stage}{kind}.rank-{rank}.jsonl"
                    cases.append((f"complete {rel} {dname}", complete, rel, damage))
            rel = f"{stage}{kind}.jsonl"
            for dname, damage in DAMAGES.items():
                cases.append((f"complete {rel} {dname}", complete, rel, damage))
    for rel in ["incorrect.jsonl", "summary.json", "run.json", "run_config.yaml", "train_config.yaml", "metrics.jsonl",
                "checkpoints/latest", "checkpoints/step-00000002.h5", "checkpoints/step-00000004.h5",
                "adapter/adapter_model.safetensors", "adapter/adapter_config.json"]:
        for dname, damage in DAMAGES.items():
            cases.append((f"complete {rel} {dname}", complete, rel, damage))
    for rel, source in [("answers.jsonl.tmp.12345", "answers.jsonl"), ("summary.json.tmp.4242", "summary.json"),
                        ("eval-after/judgements.jsonl.tmp.777", "eval-after/judgements.jsonl"),
                        ("incorrect.jsonl.tmp.31337", None),
                        ("adapter.tmp.999/adapter_model.safetensors", "adapter/adapter_model.safetensors"),
                        ("checkpoints/step-00000006.h5.tmp", "checkpoints/step-00000004.h5"),
                        ("checkpoints/latest.tmp", "checkpoints/latest")]:
        cases.append((f"complete stale {rel}", complete, rel, stale(rel, source)))
    if midtrain:
        for rel in ["checkpoints/latest", f"checkpoints/{midtrain_latest}", "metrics.jsonl"]:
            for dname, damage in DAMAGES.items():
                cases.append((f"mid-training {rel} {dname}", midtrain, rel, damage))
        for rel, source in [("checkpoints/step-00000004.h5.tmp", f"checkpoints/{midtrain_latest}"),
                            ("checkpoints/latest.tmp", None), ("metrics.jsonl.tmp.2024", "metrics.jsonl")]:
            cases.append((f"mid-training stale {rel}", midtrain, rel, stale(rel, source)))
    return cases


OLDER_KEPT = "checkpoints/step-00000002.h5"  # in the complete run, latest is step 4 (keep_last 2)


def names_file(message, rel, all_rels):
    base = os.path.basename(rel)
    unique = sum(1 for r in all_rels if os.path.basename(r.rstrip("/")) == base) <= 1
    return f"run/{rel}" in message or (unique and base in message)


def run_case(case, slot_queue):
    name, base, rel, damage = case
    slot = slot_queue.get()
    try:
        run_dir = os.path.join(slot, "run")
        rmtree(run_dir)
        shutil.copytree(base, run_dir, symlinks=True)
        # a stale lock of the run that made the copy does not matter (flock): leave run.lock as copied
        if damage in DAMAGES.values() or damage in SHARD_DAMAGES.values():
            damage(os.path.join(run_dir, rel))
        else:
            damage(run_dir)
        before = raw_tree(run_dir)
        res = run(cmd, cwd=slot, timeout=240)
        said = res.said
        outcome = {"name": name, "rel": rel, "code": res.code, "said": said, "seconds": res.seconds, "ok": False}
        if res.code == 0:
            diffs = differences(run_dir, reference, ref_tree)
            detail = [f"{d} ({first_difference(os.path.join(run_dir, d[:-8]), os.path.join(reference, d[:-8]))})"
                      if d.endswith(" differs") else d for d in diffs]
            outcome["ok"] = not diffs
            outcome["text"] = "redone (exit 0, outputs equal)" if not diffs else \
                "EXIT 0 WITH DIFFERENT OUTPUTS: " + "; ".join(detail)
            # An older kept checkpoint of a finished training is never read (only `latest` is, and the hint of a
            # refusal names an older one only after verifying it): damaged, it is left as it is, not trusted.
            after = raw_tree(run_dir)
            if diffs and name.startswith("complete ") and rel == OLDER_KEPT and \
                    all(d.startswith(rel) for d in diffs) and after.get(rel) == before.get(rel):
                outcome["ok"] = True
                outcome["text"] = "ignored (exit 0; an older kept checkpoint, never read; left as it was)"
        elif res.code == 2:
            problems = []
            if len(said) != 1:
                problems.append(f"{len(said)} slearn_dist lines")
            if not said or not said[0].startswith("slearn_dist: error:"):
                problems.append("no 'slearn_dist: error:' line")
            elif not names_file(said[0], rel, ref_all):
                problems.append(f"the line does not name {rel}")
            if said and said[0].count("slearn_dist:") > 1:
                problems.append("the 'slearn_dist: error:' prefix is repeated in the line")
            after = raw_tree(run_dir)
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            if changed:
                problems.append("the run directory changed: " + ", ".join(changed))
            outcome["ok"] = not problems
            outcome["text"] = ("refused: " if not problems else "BAD REFUSAL (" + "; ".join(problems) + "): ") + \
                (" | ".join(said) if said else res.tail(300))
        else:
            outcome["text"] = f"EXIT {res.code}: " + (" | ".join(said) if said else res.tail(300).replace("\n", " | "))
        return outcome
    finally:
        slot_queue.put(slot)


try:
    # ---- the reference: uninterrupted, in slot 0 ----
    progress("uninterrupted reference run")
    ref = run(cmd, cwd=slots[0])
    reference = os.path.join(work, "reference")
    ref_tree = keep_reference(ref, os.path.join(slots[0], "run"), reference)
    ref_all = list(raw_tree(reference))
    print(f"reference: {ref.seconds:.1f} s, files {sorted(raw_tree(reference))}", flush=True)

    # ---- a run killed with SIGKILL in the middle of training ----
    progress("a run killed in the middle of training")
    run_dir = os.path.join(slots[0], "run")
    metrics, latest = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "checkpoints", "latest")

    def metric_lines():
        try:
            with open(metrics, "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return 0

    # Killed as soon as the first checkpoint is there; training is short, so a loaded machine can still let it
    # finish first: tried again (from scratch) a few times.
    for attempt in range(4):
        rmtree(run_dir)
        job = Job(cmd, cwd=slots[0])
        deadline = time.time() + 240
        while job.poll() is None and time.time() < deadline and not (os.path.exists(latest) and metric_lines() >= 2):
            time.sleep(0.002)
        victims = list(ranks(job.pid).values())  # the ranks first: killed alone, mpirun would leave them a moment to finish
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(victims, sid=job.pid)
        job.wait(60)
        job.result()
        time.sleep(0.5)  # the ranks' own session: killed with the group, give the kernel a moment
        if os.path.exists(latest) and not os.path.exists(os.path.join(run_dir, "adapter")):
            break
        print(f"attempt {attempt + 1}: the kill came after training had finished; again", flush=True)
    midtrain, midtrain_latest = None, None
    if check(os.path.exists(latest) and not os.path.exists(os.path.join(run_dir, "adapter")),
             "the run killed in training has a checkpoint and no adapter yet"):
        midtrain = os.path.join(work, "midtrain")
        os.rename(run_dir, midtrain)
        with open(os.path.join(midtrain, "checkpoints", "latest")) as f:
            midtrain_latest = f.read().strip()
        with open(os.path.join(midtrain, "metrics.jsonl"), "rb") as f:
            lines = f.read().count(b"\n")
        print(f"mid-training copy: latest {midtrain_latest}, checkpoints "
              f"{sorted(os.listdir(os.path.join(midtrain, 'checkpoints')))}, metrics.jsonl {lines} lines", flush=True)

    cases = build_cases(reference, midtrain, midtrain_latest)
    progress(f"{len(cases)} cases, {JOBS} at a time")
    slot_queue = queue.Queue()
    for s in slots:
        slot_queue.put(s)
    with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as pool:
        outcomes = list(pool.map(lambda c: run_case(c, slot_queue), cases))

    width = max(len(o["name"]) for o in outcomes)
    print("\ncase".ljust(width + 2) + "  outcome", flush=True)
    for o in outcomes:
        print(f"{o['name']:{width}s}  {'ok  ' if o['ok'] else 'FAIL'} {o['seconds']:4.1f} s  {o['text']}", flush=True)
    print(flush=True)
    for o in outcomes:
        check(o["ok"], f"{o['name']}: {o['text']}")
    by_name = {o["name"]: o for o in outcomes}

    # ---- behaviours already built, asserted by name ----
    def expect(name, *words):
        o = by_name.get(name)
        said = o["said"][0] if o and o["said"] else ""
        check(o is not None and o["code"] == 2 and all(w in said for w in words),
              f"{name}: refused with a line holding {list(words)} (exit {o and o['code']}: {said})")

    expect("complete run.json garbled", "run.json", "unreadable")
    expect("complete run.json deleted", "has no run.json")
    expect("complete checkpoints/step-00000004.h5 garbled", "step-00000004.h5", "checksum", "dataset",
           "step-00000002.h5")
    if midtrain:
        older = sorted(f for f in os.listdir(os.path.join(midtrain, "checkpoints"))
                       if f.endswith(".h5") and f != midtrain_latest)
        words = [midtrain_latest, "checksum", "dataset"] + older[-1:]
        expect(f"mid-training checkpoints/{midtrain_latest} garbled", *words)
    counts = {}
    for o in outcomes:
        kind = next((k for k in ("redone", "refused", "ignored") if o["text"].startswith(k)), "FAIL")
        counts[kind] = counts.get(kind, 0) + 1
    print(f"outcomes: {counts}", flush=True)
finally:
    rmtree(work)
finish()
