"""The pipeline on the demo model, whose answers are partly right, so the selection is a real subset: the
selected records, the counts and the adapter are the same for -np 1, 2 and 4 (adapter within 1e-5; with the
micro-batches cut the same way for any world size and the gradients summed in double it is in fact
bit-identical), LoRA dropout included."""
import json
import os
import shutil
import subprocess
import tempfile

from runfiles import f32_tensors as tensors
from clitest import BINARY, ROOT, check, finish

os.environ.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_rmaps_base_oversubscribe": "1"})
CONFIG = os.path.join(ROOT, "configs", "demo.yaml")
# A slice of the demo, a few seconds a run: 96 questions, 48 validation questions, 3 epochs. A global batch of
# 12 makes 6 micro-batches of 2, dealt unevenly over 4 ranks; the records' lengths differ; dropout is on; the
# answers are sampled (each record has its own random stream, whichever rank answers it).
SLICE = ["data.max_records=96", "eval.data.max_records=48", "train.epochs=3", "train.global_batch_size=12",
         "train.micro_batch_size=2", "checkpoint.every_steps=5", "lora.dropout=0.1",
         "report.plots=false", "answer.temperature=0.7"]


work = tempfile.mkdtemp(prefix="slearn-demo-ranks-")
runs = {}
for np in (1, 2, 4):
    run_dir = os.path.join(work, f"np{np}")
    args = ["mpirun", "--oversubscribe", "-np", str(np), BINARY, "run", "--config", CONFIG, "--quiet",
            "--set", f"run_dir={run_dir}"]
    for setting in SLICE:
        args += ["--set", setting]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    check(done.returncode == 0, f"-np {np} finishes ({(done.stdout + done.stderr)[-400:]})")
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        runs[np] = run_dir

if len(runs) == 3:
    summary = {np: json.load(open(os.path.join(d, "summary.json"))) for np, d in runs.items()}
    s1 = summary[1]
    check(0 < s1["incorrect"] < s1["records"] == 96, f"a real subset is selected ({s1['incorrect']} of {s1['records']})")
    selected = open(os.path.join(runs[1], "incorrect.jsonl"), "rb").read()
    base = tensors(os.path.join(runs[1], "adapter", "adapter_model.safetensors"))
    for np in (2, 4):
        for key in ("records", "incorrect", "trained_on", "accuracy_before", "accuracy_after"):
            check(summary[np][key] == s1[key], f"summary {key} equal for -np 1 and -np {np}")
        check(open(os.path.join(runs[np], "incorrect.jsonl"), "rb").read() == selected,
              f"incorrect.jsonl identical, -np {np}")
        for name in ("answers.jsonl", "eval-after/answers.jsonl"):
            check(open(os.path.join(runs[np], name), "rb").read() == open(os.path.join(runs[1], name), "rb").read(),
                  f"sampled {name} identical, -np {np}")
        other = tensors(os.path.join(runs[np], "adapter", "adapter_model.safetensors"))
        worst = max(max(abs(x - y) for x, y in zip(base[k], other[k])) for k in base)
        check(base.keys() == other.keys() and worst <= 1e-5,
              f"adapter -np {np} within 1e-5 of -np 1 (max diff {worst:.2e})")
        print(f"-np {np}: adapter max |diff| vs -np 1: {worst:.2e}")
    print(f"slice: {s1['incorrect']} of {s1['records']} incorrect; accuracy "
          f"{s1['accuracy_before']:.3f} -> {s1['accuracy_after']:.3f}")
shutil.rmtree(work)
finish()
