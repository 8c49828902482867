"""slearn_dist run under mpirun: the same selection, adapter and counts for -np 1, 2 and 4; progress into a pipe
in plain lines; and SIGKILL at several points, then the same command again, ends with the outputs of an
uninterrupted run."""
import json
import os
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
work = tempfile.mkdtemp(prefix="slearn-pipeline-")


def command(np, run_dir):
    return ["mpirun", "--oversubscribe", "-np", str(np), BINARY, "run", "--config", CONFIG,
            "--set", f"run_dir={run_dir}", "--quiet"]


def run(np, run_dir):
    done = subprocess.run(command(np, run_dir), cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def read(run_dir, name):
    with open(os.path.join(run_dir, name), "rb") as f:
        return f.read()


runs = {}
for np in (1, 2, 4):
    run_dir = os.path.join(work, f"np{np}")
    code, log = run(np, run_dir)
    check(code == 0, f"-np {np} finishes (log tail: {log[-400:]})")
    runs[np] = run_dir
if all(os.path.exists(os.path.join(d, "summary.json")) for d in runs.values()):
    summaries = {np: json.load(open(os.path.join(d, "summary.json"))) for np, d in runs.items()}
    for np in (2, 4):
        for key in ("records", "incorrect", "trained_on", "accuracy_before", "accuracy_after"):
            check(summaries[np][key] == summaries[1][key], f"summary {key} equal for -np 1 and -np {np}")
        check(summaries[np]["world_size"] == np, f"summary world_size {np}")
        check(read(runs[np], "incorrect.jsonl") == read(runs[1], "incorrect.jsonl"), f"incorrect.jsonl equal, -np {np}")
        a = tensors(os.path.join(runs[1], "adapter", "adapter_model.safetensors"))
        b = tensors(os.path.join(runs[np], "adapter", "adapter_model.safetensors"))
        worst = max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in a)
        check(a.keys() == b.keys() and worst <= 1e-5, f"adapter -np {np} within 1e-5 of -np 1 (max diff {worst:.2e})")
    for key in ("answer", "judge", "train", "eval"):
        check(key in summaries[2]["stages"] and "device_hours" in summaries[2]["stages"][key], f"stage {key} timed")

# Progress into a pipe (as into a Slurm log): plain lines, never carriage-return redraws, although mpirun hands
# each rank a pseudo-terminal for its output (src/util/terminal.hpp).
loud_dir = os.path.join(work, "progress")
loud = subprocess.run([a for a in command(2, loud_dir) if a != "--quiet"], cwd=ROOT, capture_output=True, text=True,
                      timeout=600)
check(loud.returncode == 0, f"-np 2 with progress finishes ({(loud.stdout + loud.stderr)[-300:]})")
check("\r" not in loud.stdout + loud.stderr, "progress into a pipe under mpirun has no carriage returns")
check("answer: " in loud.stdout and "(done)" in loud.stdout, "the answer stage's progress is a plain line")
check("slearn_dist train: step" in loud.stderr, "the trainer's progress is a plain line")

# Kill at several points: as soon as each of these files appears, SIGKILL the whole job, then run again.
kill_points = ["answers.rank-0.jsonl", "judgements.rank-1.jsonl", "checkpoints/latest", "eval-after"]
killed_dir = os.path.join(work, "killed")
for point in kill_points:
    job = subprocess.Popen(command(2, killed_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.time() + 120
    while job.poll() is None and time.time() < deadline and not os.path.exists(os.path.join(killed_dir, point)):
        time.sleep(0.001)
    landed = "killed" if job.poll() is None else "had already finished"
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    state = sorted(p for p in os.listdir(killed_dir)) if os.path.isdir(killed_dir) else []
    print(f"kill at {point}: {landed}; run dir then held {', '.join(state)}")
code, log = run(2, killed_dir)
check(code == 0, f"the killed run finishes when run again ({log[-400:]})")
for name in ("answers.jsonl", "judgements.jsonl", "incorrect.jsonl", "adapter/adapter_model.safetensors"):
    check(os.path.exists(os.path.join(killed_dir, name)) and read(killed_dir, name) == read(runs[2], name),
          f"{name} after kills equals the uninterrupted run's")
ids = [json.loads(line)["id"] for line in open(os.path.join(killed_dir, "answers.jsonl"))]
check(len(ids) == len(set(ids)) == 16, "every record answered exactly once")

# Another configuration in the same run directory is refused.
done = subprocess.run(command(1, killed_dir) + ["--set", "lora.r=8"], cwd=ROOT, capture_output=True, text=True)
check(done.returncode != 0 and "config" in done.stdout + done.stderr, "another configuration is refused")
shutil.rmtree(work)
finish()
