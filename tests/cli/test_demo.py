"""The demo shows the paper's effect for real (configs/demo.yaml under mpirun -np 2): validation accuracy
rises by at least 20 points, and training on the incorrect subset lands within 3 points of training on
everything, in clearly less training time.

Training time is checked as training work, the tokens passed through forward and backward (metrics.jsonl),
which is what the wall time is proportional to and, unlike the wall time, does not depend on what else the
machine is doing (tests are never timed; the wall times are printed for the record)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from clitest import BINARY, ROOT, check, finish

os.environ.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_rmaps_base_oversubscribe": "1"})
config = os.path.join(ROOT, "configs", "demo.yaml")
if not os.path.exists(config):
    print("SKIPPED: configs/demo.yaml not present")
    sys.exit(0)
work = tempfile.mkdtemp(prefix="slearn-demo-")
summaries = {}
for train_on in ("incorrect", "all"):
    run_dir = os.path.join(work, train_on)
    done = subprocess.run(["mpirun", "--oversubscribe", "-np", "2", BINARY, "run", "--config", config,
                           "--set", f"run_dir={run_dir}", "--set", f"train_on={train_on}", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    check(done.returncode == 0, f"demo with train_on={train_on} finishes ({(done.stdout + done.stderr)[-400:]})")
    path = os.path.join(run_dir, "summary.json")
    if os.path.exists(path):
        summaries[train_on] = json.load(open(path))
        with open(os.path.join(run_dir, "metrics.jsonl")) as metrics:
            summaries[train_on]["trained_tokens"] = sum(json.loads(line)["tokens"] for line in metrics)
if len(summaries) == 2:
    sel, full = summaries["incorrect"], summaries["all"]
    before, after, after_all = sel["accuracy_before"], sel["accuracy_after"], full["accuracy_after"]
    t_sel, t_all = sel["stages"]["train"]["wall_seconds"], full["stages"]["train"]["wall_seconds"]
    w_sel, w_all = sel["trained_tokens"], full["trained_tokens"]
    print(f"demo: accuracy {before:.3f} -> {after:.3f} (incorrect subset, {sel['trained_on']} records, "
          f"{w_sel} tokens trained, {t_sel:.1f} s) vs {after_all:.3f} (all {full['trained_on']} records, "
          f"{w_all} tokens, {t_all:.1f} s)")
    check(after - before >= 0.20, f"accuracy rises by at least 20 points ({before:.3f} -> {after:.3f})")
    check(abs(after - after_all) <= 0.03, f"incorrect subset within 3 points of all ({after:.3f} vs {after_all:.3f})")
    check(sel["trained_on"] < full["trained_on"], "the subset is smaller than the whole set")
    check(w_sel <= 0.8 * w_all, f"clearly less training work ({w_sel} vs {w_all} tokens through the model)")
shutil.rmtree(work)
finish()
