"""Stopping on request and failures, end to end: a 2-rank `slearn_dist run` under mpirun is sent SIGTERM or
SIGUSR1 while it answers, judges, trains and evaluates; each time it must exit 75 within the grace time with one
line naming the signal and the stage, and the same command run again must end with the outputs of an
uninterrupted run. Then a rank is killed with SIGKILL (the job must end promptly, naming the rank, and resume),
`slearn_dist train` is stopped and resumed, and both NaN policies are checked under mpirun."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from runfiles import f32_tensors as tensors
from clitest import BINARY, ROOT, check, finish

os.environ.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_rmaps_base_oversubscribe": "1"})
CONFIG = os.path.join(ROOT, "tests", "fixtures", "pipeline-tiny.yaml")
DATA = os.path.join(ROOT, "tests", "fixtures", "data", "medquad-tiny.jsonl")
GRACE = 30  # seconds from the signal to the exit
work = tempfile.mkdtemp(prefix="slearn-signals-")

# Stages long enough (a few seconds each on two loaded cores) to be caught in the middle: the fixture's 16
# records six times over, longer answers, the model judging itself, more training steps.
big_data = os.path.join(work, "data.jsonl")
with open(DATA) as f, open(big_data, "w") as out:
    records = [json.loads(line) for line in f if line.strip()]
    for copy in range(6):
        for r in records:
            out.write(json.dumps(dict(r, id=f"{r['id']}-{copy}")) + "\n")
SLOW = ["--set", f"data.path={big_data}", "--set", "answer.max_new_tokens=120", "--set", "answer.batch_size=2",
        "--set", "answer.long_prompt=truncate-left", "--set", "judge.kind=self", "--set", "judge.max_new_tokens=120",
        "--set", f"eval.data.path={big_data}", "--set", "eval.data.max_records=24"]


def command(run_dir, extra=(), np=2):
    return ["mpirun", "--oversubscribe", "-np", str(np), BINARY, "run", "--config", CONFIG,
            "--set", f"run_dir={run_dir}", "--quiet"] + list(extra)


def run(cmd):
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def ranks(job):
    """The slearn_dist processes mpirun started (its children), by rank order of their pids."""
    pids = []
    for task in os.listdir(f"/proc/{job.pid}/task"):
        try:
            with open(f"/proc/{job.pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    named = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            named.append((int(env[b"OMPI_COMM_WORLD_RANK"]), pid))
        except (OSError, KeyError, ValueError):
            pass
    return [pid for _, pid in sorted(named)]


def lines(path):
    try:
        with open(path) as f:
            return f.read().count("\n")
    except OSError:
        return 0


def wait_for(job, condition, what, timeout=300):
    deadline = time.time() + timeout
    while job.poll() is None and time.time() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    check(False, f"{what} before the job ended (exit {job.poll()})")
    return False


def stop(job, send, signame, stage, detail_pattern=""):
    """Sends the signal, then checks exit 75 within GRACE and the one line naming signal and stage."""
    sent = time.time()
    send()
    try:
        output, _ = job.communicate(timeout=GRACE + 30)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
    took = time.time() - sent
    said = said_lines(output)
    check(job.returncode == 75, f"{signame} during {stage}: exit 75 (got {job.returncode}; {output[-600:]})")
    check(took <= GRACE, f"{signame} during {stage}: stopped within {GRACE} s (took {took:.1f} s)")
    pattern = rf"slearn_dist: stopped by {signame} during {stage} \({detail_pattern}.*\); run the same command again to resume"
    check(len(said) == 1 and re.fullmatch(pattern, said[0]) is not None,
          f"{signame} during {stage}: one line naming the signal and stage (got {said})")
    print(f"{signame} during {stage}: exit {job.returncode} after {took:.1f} s: {said[0] if said else '-'}")
    return said[0] if said else ""


def said_lines(output):
    """slearn_dist's own lines (mpirun's notes and the progress output left out)."""
    return [l[l.index("slearn_dist: "):] for l in output.splitlines() if "slearn_dist: " in l]


def shard_ids_unique(run_dir, sub=""):
    """Every complete shard line parses and no id is written twice (a stop must not duplicate work)."""
    d = os.path.join(run_dir, sub)
    for name in ("answers", "judgements"):
        ids = []
        for f in sorted(os.listdir(d)):
            if f.startswith(name + ".rank-") and f.endswith(".jsonl"):
                with open(os.path.join(d, f)) as shard:
                    ids += [json.loads(l)["id"] for l in shard.read().split("\n")[:-1]]
        check(len(ids) == len(set(ids)), f"{d}: no {name} id written twice")


def read(run_dir, name):
    with open(os.path.join(run_dir, name), "rb") as f:
        return f.read()


def same_outputs(run_dir, reference, what):
    code, log = run(command(run_dir, SLOW) if reference == ref_dir else command(run_dir))
    check(code == 0, f"{what}: the same command again finishes ({log[-600:]})")
    for name in ("answers.jsonl", "judgements.jsonl", "incorrect.jsonl", "eval-after/answers.jsonl",
                 "eval-after/judgements.jsonl"):
        if os.path.exists(os.path.join(reference, name)):
            check(os.path.exists(os.path.join(run_dir, name)) and read(run_dir, name) == read(reference, name),
                  f"{what}: {name} equals the uninterrupted run's")
    ids = [json.loads(l)["id"] for l in read(run_dir, "answers.jsonl").decode().splitlines()]
    check(len(ids) == len(set(ids)) == len(read(reference, "answers.jsonl").decode().splitlines()),
          f"{what}: every record answered exactly once")
    a = tensors(os.path.join(reference, "adapter", "adapter_model.safetensors"))
    b = tensors(os.path.join(run_dir, "adapter", "adapter_model.safetensors"))
    worst = max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in a) if a.keys() == b.keys() else float("inf")
    check(worst <= 1e-5, f"{what}: adapter within 1e-5 of the uninterrupted run's (max diff {worst:.2e})")
    s, r = json.load(open(os.path.join(run_dir, "summary.json"))), json.load(open(os.path.join(reference, "summary.json")))
    for key in ("records", "incorrect", "trained_on", "skipped_steps", "accuracy_before", "accuracy_after"):
        check(s.get(key) == r.get(key), f"{what}: summary {key} equal")


# ---- the uninterrupted reference ----
ref_dir = os.path.join(work, "reference")
started = time.time()
code, log = run(command(ref_dir, SLOW))
check(code == 0, f"the uninterrupted run finishes ({log[-600:]})")
print(f"uninterrupted run: {time.time() - started:.1f} s")
T0 = time.time()


def progress(what):
    print(f"[{time.time() - T0:6.1f} s] {what}", flush=True)

# ---- stopped in each stage, resumed each time by the same command ----
stopped = os.path.join(work, "stopped")
cmd = command(stopped, SLOW)

progress("stopping in each stage")
job = start(cmd)  # answer: SIGTERM to every rank (what Slurm does)
if wait_for(job, lambda: lines(os.path.join(stopped, "answers.rank-0.jsonl")) >= 2, "answering began"):
    stop(job, lambda: [os.kill(p, signal.SIGTERM) for p in ranks(job)], "SIGTERM", "answer",
         r"\d+ of 96 answers saved")
check(not os.path.exists(os.path.join(stopped, "answers.jsonl")), "stopped while answering: no merged answers.jsonl")
check(not os.path.exists(os.path.join(stopped, ".stop-requested")), "the stop marker is removed")
shard_ids_unique(stopped)

job = start(cmd)  # judge: SIGUSR1 to mpirun, which forwards it to every rank
if wait_for(job, lambda: lines(os.path.join(stopped, "judgements.rank-0.jsonl")) >= 1, "judging began"):
    stop(job, lambda: job.send_signal(signal.SIGUSR1), "SIGUSR1", "judge", r"\d+ of 96 judgements saved")
shard_ids_unique(stopped)

job = start(cmd)  # train: SIGTERM to every rank
latest = os.path.join(stopped, "checkpoints", "latest")
if wait_for(job, lambda: os.path.exists(latest), "training began"):
    line = stop(job, lambda: [os.kill(p, signal.SIGTERM) for p in ranks(job)], "SIGTERM", "train",
                r"step \d+ of \d+ checkpointed")
    step = re.search(r"step (\d+) of", line)
    check(step is not None and f"step-{int(step.group(1)):08d}.h5" in open(latest).read(),
          f"the checkpoint of the step named is the latest ({line})")
    check(not os.path.exists(os.path.join(stopped, "adapter")), "stopped while training: no adapter yet")

job = start(cmd)  # evaluation after training: SIGTERM to rank 1 alone; rank 0 follows through the stop marker
if wait_for(job, lambda: lines(os.path.join(stopped, "eval-after", "answers.rank-0.jsonl")) >= 1, "evaluation began"):
    stop(job, lambda: os.kill(ranks(job)[1], signal.SIGTERM), "SIGTERM", "eval after answer",
         r"\d+ of 24 answers saved")
    shard_ids_unique(stopped, "eval-after")
    check(not os.path.exists(os.path.join(stopped, "summary.json")), "stopped while evaluating: no summary.json")

progress("resuming the stopped run")
same_outputs(stopped, ref_dir, "stopped in every stage")

# ---- one rank killed outright: the job ends promptly, names the rank, and resumes ----
progress("killing one rank")
killed = os.path.join(work, "killed")
job = start(command(killed, SLOW))
if wait_for(job, lambda: lines(os.path.join(killed, "answers.rank-1.jsonl")) >= 1, "answering began"):
    victim = ranks(job)[1]
    sent = time.time()
    os.kill(victim, signal.SIGKILL)
    try:
        output, _ = job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
        check(False, "the job hangs after a rank was killed")
    took = time.time() - sent
    print(f"SIGKILL to rank 1: mpirun exit {job.returncode} after {took:.1f} s")
    check(job.returncode != 0 and took <= 60, f"the job ends within 60 s (exit {job.returncode}, {took:.1f} s)")
    check(re.search(r"process rank 1 .*exited on signal 9", output) is not None,
          f"the message names the killed rank ({output[-500:]})")
    same_outputs(killed, ref_dir, "one rank killed")

# ---- slearn_dist train: SIGTERM, then the same command ----
progress("slearn_dist train")
train_config = os.path.join(ROOT, "configs", "train-tiny.yaml")
# Both in the same run_dir, one after the other (a checkpoint holds the configuration, run_dir included), so
# that their checkpoints can be compared byte for byte.
d = os.path.join(work, "train")
train_cmd = [BINARY, "train", "--config", train_config, "--set", f"run_dir={d}", "--set", "train.max_steps=24",
             "--set", "checkpoint.every_steps=4", "--quiet"]
code, log = run(train_cmd)
check(code == 0, f"train finishes ({log[-300:]})")
straight = d + "-straight"
os.rename(d, straight)
train_runs = {"straight": (straight, train_cmd)}
job = start(train_cmd)
if wait_for(job, lambda: lines(os.path.join(d, "metrics.jsonl")) >= 5, "training began"):
    line = stop(job, lambda: job.send_signal(signal.SIGTERM), "SIGTERM", "train", r"step \d+ of 24 checkpointed")
    step = re.search(r"step (\d+) of", line)
    check(step is not None and f"step-{int(step.group(1)):08d}.h5" in open(os.path.join(d, "checkpoints", "latest")).read(),
          f"train: the step named is checkpointed as the latest ({line})")
    code, log = run(train_cmd)
    check(code == 0, f"the stopped train finishes when run again ({log[-300:]})")
    check(read(d, "adapter/adapter_model.safetensors") == read(train_runs["straight"][0], "adapter/adapter_model.safetensors"),
          "the stopped and resumed train gives the uninterrupted adapter, byte for byte")
    # (Which older ones are kept depends on the step it stopped at; the last one is in both.)
    kept = sorted(set(n for n in os.listdir(os.path.join(straight, "checkpoints")) if n.endswith(".h5")) &
                  set(n for n in os.listdir(os.path.join(d, "checkpoints")) if n.endswith(".h5")))
    check("step-00000024.h5" in kept, f"train: both runs keep the last checkpoint ({kept})")
    for name in kept:
        check(read(d, "checkpoints/" + name) == read(straight, "checkpoints/" + name),
              f"train: checkpoint {name} after a stop and resume equals the uninterrupted run's, byte for byte")

# ---- NaN policies under mpirun (the plain fixture configuration: 4 steps, a checkpoint after each) ----
progress("NaN policies")
plain = os.path.join(work, "plain")
code, log = run(command(plain))
check(code == 0, f"the plain run finishes ({log[-400:]})")
nan_stop = os.path.join(work, "nan-stop")
code, log = run(command(nan_stop, ["--inject-nan-at-step", "3"]))
said = said_lines(log)
check(code == 1, f"nan_policy stop: exit 1 (got {code}; {log[-400:]})")
check(len(said) == 1 and "training step 3: non-finite value in the gradient of base_model.model.model.layers." in said[0]
      and "NaN" in said[0] and "last good checkpoint (step 2)" in said[0],
      f"nan_policy stop: one line naming the step and the tensor ({said})")
check("step-00000002.h5" in open(os.path.join(nan_stop, "checkpoints", "latest")).read()
      and not os.path.exists(os.path.join(nan_stop, "checkpoints", "step-00000003.h5")),
      "nan_policy stop: the last good checkpoint is the latest, none written after it")
check(not os.path.exists(os.path.join(nan_stop, "adapter")), "nan_policy stop: no adapter")
same_outputs(nan_stop, plain, "resumed after a NaN stop")

nan_skip = os.path.join(work, "nan-skip")
code, log = run(command(nan_skip, ["--set", "train.nan_policy=skip_step", "--inject-nan-at-step", "2"]))
check(code == 0, f"nan_policy skip_step: the run finishes ({log[-400:]})")
check("step 2 skipped: non-finite value in the gradient of" in log, "nan_policy skip_step: the skip is logged")
if code == 0:
    summary = json.load(open(os.path.join(nan_skip, "summary.json")))
    check(summary.get("skipped_steps") == 1, f"summary.json counts the skipped step ({summary.get('skipped_steps')})")
    metrics = [json.loads(l) for l in open(os.path.join(nan_skip, "metrics.jsonl"))]
    check([m["step"] for m in metrics if m.get("skipped")] == [2] and len(metrics) == 4,
          "metrics.jsonl marks step 2 skipped and has every step")
    check(re.search(r"skipped steps\s+1", log) is not None, "the final table shows the skipped step")

shutil.rmtree(work)
finish()
