"""slearn_dist run on the real data sets of ../shared/data/datasets (a few records each, the tiny fixture model):
Alpaca-format Chinese (Huatuo), MedQuAD with its repeated ids skipped as bad records, PubMedQA with the
yes/no/maybe rule; and a bad record under on_bad_record: error stops the run naming file and line."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from clitest import BINARY, ROOT, SHARED_DATA, check, finish

datasets = os.path.join(SHARED_DATA, "datasets")
if not os.path.isdir(datasets):
    print("SKIPPED: shared data not found at", datasets)
    sys.exit(0)
work = tempfile.mkdtemp(prefix="slearn-real-")
config = os.path.join(ROOT, "tests", "fixtures", "pipeline-tiny.yaml")
cases = {
    "huatuo": ["data.path=" + os.path.join(datasets, "huatuo-med-zh.jsonl"), "data.format=alpaca"],
    "medquad": ["data.path=" + os.path.join(datasets, "medquad-en.jsonl"), "data.on_bad_record=skip"],
    "pubmedqa": ["data.path=" + os.path.join(datasets, "pubmedqa-labelled-en.jsonl"), "judge.rule=yesno"],
}
for name, sets in cases.items():
    run_dir = os.path.join(work, name)
    args = [BINARY, "run", "--config", config, "--set", f"run_dir={run_dir}", "--set", "data.max_records=6",
            "--set", "eval.data.path=", "--quiet"]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    check(done.returncode == 0, f"{name}: the pipeline runs ({(done.stdout + done.stderr)[-300:]})")
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary_path):
        summary = json.load(open(summary_path))
        check(summary["records"] == 6, f"{name}: 6 records read")
        answers = [json.loads(l) for l in open(os.path.join(run_dir, "answers.jsonl"), encoding="utf-8")]
        check(len(answers) == 6 and all(a["reference"] for a in answers), f"{name}: answers carry references")
        judgements = [json.loads(l) for l in open(os.path.join(run_dir, "judgements.jsonl"))]
        if name == "pubmedqa":
            check(all(j["judged_by"] in ("rule:yesno", "rule:undecided") for j in judgements),
                  "pubmedqa: judged by the yes/no rule")
        if name == "medquad":
            check(summary["bad_records"] >= 1, f"medquad: repeated ids counted as bad records ({summary['bad_records']})")
        incorrect = [json.loads(l) for l in open(os.path.join(run_dir, "incorrect.jsonl"), encoding="utf-8")]
        check(len(incorrect) == summary["incorrect"], f"{name}: incorrect.jsonl holds the selected records")
        if name == "huatuo" and incorrect:
            check("instruction" in incorrect[0] and "output" in incorrect[0], "huatuo: selected records keep Alpaca fields")

# MedQuAD under on_bad_record: error stops at its first repeated id, naming file and line.
done = subprocess.run([BINARY, "run", "--config", config, "--set", f"run_dir={os.path.join(work, 'strict')}",
                       "--set", "data.path=" + os.path.join(datasets, "medquad-en.jsonl"), "--quiet"],
                      cwd=ROOT, capture_output=True, text=True, timeout=300)
check(done.returncode == 2 and "medquad-en.jsonl:2: duplicate id" in done.stderr,
      f"a bad record stops the run naming file and line ({done.stderr.strip()[-200:]})")
shutil.rmtree(work)
finish()
