"""Regression tests for the defects a hostile probe found (issue 10): each case failed before its fix. Nothing the
run did not create may be deleted or overwritten, and no run may exit 0 on results it did not really compute.
Driven end to end on the tiny fixture model (tests/fixtures/pipeline-tiny.yaml), single process unless noted."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cli"))
from clitest import BINARY, FIXTURES, ROOT, check, finish  # noqa: E402

SLEARN = os.path.abspath(BINARY)
CONFIG = os.path.join(FIXTURES, "pipeline-tiny.yaml")
MODEL = os.path.join(FIXTURES, "models", "qwen2-gqa-tied")
DATA = os.path.join(FIXTURES, "data", "medquad-tiny.jsonl")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.yaml")
work = tempfile.mkdtemp(prefix="slearn-defects-")


def run(args, cwd=ROOT, preexec_fn=None):
    done = subprocess.run([SLEARN] + args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec_fn)
    return done.returncode, done.stdout, done.stderr


def pipeline(run_dir, *extra, config=CONFIG, cwd=ROOT):
    return run(["run", "--config", config, "--set", f"run_dir={run_dir}", "--quiet"] + list(extra), cwd=cwd)


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("slearn_dist: error: ")


def tree_digest(path):
    """sha256 over every file's relative name and bytes under path (or of the file itself)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
        return h.hexdigest()
    for base, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(base, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def refused(code, err, what, *needles):
    check(code == 2, f"{what}: exit 2 (got {code}: {err.strip()})")
    check(one_error_line(err), f"{what}: one error line (got {err!r})")
    for needle in needles:
        check(needle in err, f"{what}: the line says {needle!r} ({err.strip()})")


def finished_run(name, *extra):
    run_dir = os.path.join(work, name)
    code, _, err = pipeline(run_dir, *extra)
    assert code == 0, f"reference run {name} failed: {err}"
    return run_dir


# ---- 1. --force deletes only what a run wrote ----------------------------------------------------------------
def defect_section_1():
    # run_dir holding the data file
    d = os.path.join(work, "holds-data")
    os.makedirs(d)
    shutil.copy(DATA, os.path.join(d, "train.jsonl"))
    before = tree_digest(d)
    code, _, err = pipeline(d, "--set", f"data.path={d}/train.jsonl", "--force")
    refused(code, err, "--force with the data file inside run_dir", "data file", "train.jsonl")
    check(tree_digest(d) == before, "--force with the data file inside run_dir: nothing deleted")
    # run_dir set to (a copy of) the model
    model_copy = os.path.join(work, "model-copy")
    shutil.copytree(MODEL, model_copy)
    before = tree_digest(model_copy)
    code, _, err = pipeline(model_copy, "--set", f"model={model_copy}", "--force")
    refused(code, err, "--force with run_dir = the model", "model directory")
    check(tree_digest(model_copy) == before, "--force with run_dir = the model: the weights are intact")
    # run_dir = . in a directory of the user's
    cwd = os.path.join(work, "user-cwd")
    os.makedirs(cwd)
    with open(os.path.join(cwd, "notes.txt"), "w") as f:
        f.write("my only copy\n")
    before = tree_digest(cwd)
    absolute = ["--set", f"model={MODEL}", "--set", f"data.path={DATA}", "--set", f"eval.data.path={DATA}"]
    code, _, err = pipeline(".", "--force", *absolute, cwd=cwd)
    refused(code, err, "--force with run_dir=. (a user's directory)", "no run.json")
    check(tree_digest(cwd) == before, "--force with run_dir=.: the working directory is intact")
    code, _, err = pipeline(".", *absolute, cwd=cwd)
    refused(code, err, "run_dir=. (a user's directory) without --force", "no run.json")
    check(tree_digest(cwd) == before, "run_dir=. without --force: nothing touched (no leftovers removed either)")
    # the configuration file inside run_dir
    d = finished_run("holds-config")
    shutil.copy(CONFIG, os.path.join(d, "my.yaml"))
    code, _, err = run(["run", "--config", os.path.join(d, "my.yaml"), "--set", f"run_dir={d}", "--quiet", "--force"])
    refused(code, err, "--force with the config inside run_dir", "configuration file")
    check(os.path.exists(os.path.join(d, "my.yaml")), "--force with the config inside run_dir: the config is kept")
    # a run directory of ours with a user's file in it: --force starts over and keeps the file
    if os.path.exists(os.path.join(d, "my.yaml")):
        os.remove(os.path.join(d, "my.yaml"))
    with open(os.path.join(d, "notes.txt"), "w") as f:
        f.write("kept\n")
    with open(os.path.join(d, "answers.jsonl.tmp.999999"), "w") as f:
        f.write("a temporary of ours\n")
    code, _, err = pipeline(d, "--force")
    check(code == 0, f"--force on a run directory of ours (got {code}: {err.strip()})")
    check(os.path.exists(os.path.join(d, "notes.txt")), "--force keeps a file the run did not write")
    check(not os.path.exists(os.path.join(d, "answers.jsonl.tmp.999999")), "--force removes a temporary of ours")


# ---- 2. a corrupted checkpoint is refused, naming the file and dataset (and a valid older one) ---------------
def defect_section_2():
    d = finished_run("corrupt-checkpoint", "--set", "checkpoint.every_steps=1", "--set", "checkpoint.keep_last=2")
    ckpt = os.path.join(d, "checkpoints")
    latest = open(os.path.join(ckpt, "latest")).read().strip()
    older = sorted(n for n in os.listdir(ckpt) if n.startswith("step-") and n != latest)
    path = os.path.join(ckpt, latest)
    # Overwrite array data, not HDF5's own structures (which HDF5 may notice by itself): the final adapter's
    # values are the latest checkpoint's, so a run of them found in adapter_model.safetensors is found in it.
    with open(os.path.join(d, "adapter", "adapter_model.safetensors"), "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        data = f.read()
    name = sorted(k for k in header if k != "__metadata__" and "lora_B" in k)[0]
    begin, end = header[name]["data_offsets"]
    blob = open(path, "rb").read()
    at = blob.find(data[begin:end][:256])
    check(at > 0, f"found {name}'s values in {latest}")
    with open(path, "r+b") as f:
        f.seek(at + 64)
        f.write(b"\x5a" * 64)
    code, _, err = pipeline(d, "--set", "checkpoint.every_steps=1", "--set", "checkpoint.keep_last=2")
    refused(code, err, "a checkpoint overwritten in the middle", latest)
    check("checksum" in err or "corrupt" in err, f"the refusal says the checkpoint is corrupt ({err.strip()})")
    if older:
        check(older[-1] in err, f"the refusal names the valid older checkpoint {older[-1]} ({err.strip()})")


# ---- 3, 4. the run's fingerprint covers the eval data, the tokenizer and the judge model ----------------------
def defect_section_3():
    d = os.path.join(work, "eval-changed")
    eval_file = os.path.join(work, "eval.jsonl")
    shutil.copy(DATA, eval_file)
    code, _, err = pipeline(d, "--set", f"eval.data.path={eval_file}")
    check(code == 0, f"run with a copied eval file ({err.strip()})")
    records = [json.loads(line) for line in open(eval_file)]
    records[0]["answer"] = "a different reference"
    with open(eval_file, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    code, _, err = pipeline(d, "--set", f"eval.data.path={eval_file}")
    refused(code, err, "the eval file changed in place", "another eval")

    model_copy2 = os.path.join(work, "model-tok")
    shutil.copytree(MODEL, model_copy2)
    d = os.path.join(work, "tok-changed")
    code, _, err = pipeline(d, "--set", f"model={model_copy2}")
    check(code == 0, f"run with a copied model ({err.strip()})")
    tok = os.path.join(model_copy2, "tokenizer.json")
    doc = json.load(open(tok))
    with open(tok, "w") as f:
        json.dump(doc, f, indent=1)  # the same tokenizer, other bytes: still another file than the one the run used
    code, _, err = pipeline(d, "--set", f"model={model_copy2}")
    refused(code, err, "tokenizer.json changed mid-run", "another tokenizer")

    judge_copy = os.path.join(work, "judge-model")
    shutil.copytree(MODEL, judge_copy)
    d = os.path.join(work, "judge-changed")
    judge_args = ["--set", "judge.kind=model", "--set", f"judge.model={judge_copy}", "--set", "judge.max_new_tokens=4",
                  "--set", "answer.long_prompt=truncate-left", "--set", "eval.data.max_records=2"]
    code, _, err = pipeline(d, *judge_args)
    check(code == 0, f"run with a judge model ({err.strip()})")
    with open(os.path.join(judge_copy, "tokenizer.json"), "w") as f:
        json.dump(json.load(open(os.path.join(MODEL, "tokenizer.json"))), f, indent=2)
    code, _, err = pipeline(d, *judge_args)
    refused(code, err, "the judge model's tokenizer changed", "another judge")


# ---- 6. step counts out of range are input errors -------------------------------------------------------------
def defect_section_4():
    for key, value in [("train.epochs", 2**62), ("train.global_batch_size", 2**63 - 1), ("train.max_steps", 2**40),
                       ("train.micro_batch_size", 2**62)]:
        d = os.path.join(work, "overflow")
        code, _, err = pipeline(d, "--set", f"{key}={value}")
        refused(code, err, f"{key}={value}", key)
        check(not os.path.exists(d), f"{key}={value}: refused before the run directory is made")
    # in range for the schema, out of range as a product: 2000 records x 1e6 epochs at batch 1
    big = os.path.join(work, "big.jsonl")
    with open(big, "w") as f:
        for i in range(2000):
            f.write(json.dumps({"id": f"q{i}", "question": f"question {i}?", "answer": "yes"}) + "\n")
    code, _, err = pipeline(os.path.join(work, "overflow"), "--set", "train.epochs=1000000",
                            "--set", "train.global_batch_size=1", "--set", f"data.path={big}")
    refused(code, err, "epochs x steps per epoch above the bound", "optimizer steps")
    check(not os.path.exists(os.path.join(work, "overflow")), "the step bound is checked before the run directory is made")


# ---- 8. a judge prompt that cannot fit is refused before any stage -------------------------------------------
def defect_section_5():
    d = os.path.join(work, "judge-too-long")
    code, _, err = pipeline(d, "--set", "judge.kind=self", config=DEMO_CONFIG)
    refused(code, err, "judge.kind self on a 128-token model", "judge prompt", "record", "answer.max_new_tokens")
    check(not os.path.exists(os.path.join(d, "eval-before")), "the judge check comes before eval-before runs")


# ---- 9. merge into a non-empty directory --------------------------------------------------------------------
def defect_section_6():
    d = finished_run("for-merge")
    out = os.path.join(work, "merge-out")
    os.makedirs(out)
    with open(os.path.join(out, "model-00001-of-00002.safetensors"), "wb") as f:
        f.write(b"old weights")
    code, _, err = run(["merge", "--model", MODEL, "--adapter", os.path.join(d, "adapter"), "--out", out])
    refused(code, err, "merge into a non-empty directory", "not empty")
    check(open(os.path.join(out, "model-00001-of-00002.safetensors"), "rb").read() == b"old weights",
          "merge into a non-empty directory: nothing overwritten")


# ---- 10. a damaged stage line that parses is redone, not an internal error -------------------------------------
def defect_section_7():
    reference = finished_run("stage-reference")
    reference_answers = open(os.path.join(reference, "answers.jsonl")).read()
    for name, damage in [("missing-field", lambda r: {"id": r["id"]}),
                         ("wrong-type", lambda r: dict(r, answer=42)),
                         ("id-not-a-string", lambda r: dict(r, id=7))]:
        shard = os.path.join(reference, "answers.rank-0.jsonl")  # in place: run_dir is part of the fingerprint
        lines = open(shard).read().splitlines()
        lines[1] = json.dumps(damage(json.loads(lines[1])))
        with open(shard, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.remove(os.path.join(reference, "answers.jsonl"))
        code, _, err = pipeline(reference)
        check(code == 0 and "internal error" not in err, f"stage line {name}: redone (got {code}: {err.strip()})")
        check(open(os.path.join(reference, "answers.jsonl")).read() == reference_answers,
              f"stage line {name}: answers.jsonl equal to the reference")


# ---- 11. a run_dir that is a file, or that cannot be created ---------------------------------------------------
def defect_section_8():
    a_file = os.path.join(work, "a-file")
    with open(a_file, "w") as f:
        f.write("x")
    code, _, err = pipeline(a_file)
    refused(code, err, "run_dir is a file", "a-file")
    code, _, err = pipeline(os.path.join(a_file, "sub"))
    refused(code, err, "run_dir under a file", "a-file")
    code, _, err = pipeline("/proc/slearn-cannot-be-here")
    refused(code, err, "run_dir where no directory can be made (/proc)", "/proc/slearn-cannot-be-here")
    if os.geteuid() != 0:
        ro = os.path.join(work, "read-only")
        os.makedirs(ro)
        os.chmod(ro, 0o555)
        code, _, err = pipeline(os.path.join(ro, "run"))
        refused(code, err, "run_dir under a read-only parent", "read-only")


# ---- 15. a garbage run.json is unreadable, not "another run" ---------------------------------------------------
def defect_section_9():
    d = finished_run("garbage-marker")
    with open(os.path.join(d, "run.json"), "w") as f:
        f.write("\x00\x01 not json")
    before = tree_digest(d)
    code, _, err = pipeline(d)
    refused(code, err, "a garbage run.json", "unreadable")
    code, _, err = pipeline(d, "--force")
    refused(code, err, "a garbage run.json with --force", "unreadable")
    check(tree_digest(d) == before, "a garbage run.json: nothing deleted, even with --force")


# ---- 16. SIGTERM that arrives as the program starts is a stop (75), not a death (143) ---------------------------
def defect_section_10():
    def term_pending():
        """Starts the child with SIGTERM blocked and already pending: it is delivered at the first unblock."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        os.kill(os.getpid(), signal.SIGTERM)


    d = os.path.join(work, "term-at-start")
    done = subprocess.run([SLEARN, "run", "--config", CONFIG, "--set", f"run_dir={d}", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, preexec_fn=term_pending)
    check(done.returncode == 75, f"run: SIGTERM at start exits 75 (got {done.returncode}: {done.stderr.strip()})")
    code, _, err = pipeline(d)
    check(code == 0, f"run: resumes after a SIGTERM at start ({err.strip()})")
    done = subprocess.run([SLEARN, "generate", "--model", MODEL, "--prompt-ids", "5,6,7", "--max-new-tokens", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, preexec_fn=term_pending)
    check(done.returncode == -signal.SIGTERM, f"generate: SIGTERM at start keeps its default action (got {done.returncode})")


# ---- 17. identical runs write identical checkpoints ------------------------------------------------------------
def defect_section_11():
    # Two runs one after the other in the same run_dir (its name is in the configuration text a checkpoint holds).
    same = os.path.join(work, "same")
    finished_run("same")
    os.rename(same, same + "-a")
    time.sleep(1.1)  # another second on the clock: a timestamp in a file would differ
    finished_run("same")
    for name in sorted(os.listdir(os.path.join(same, "checkpoints"))):
        if name.endswith(".h5"):
            first = open(os.path.join(same + "-a", "checkpoints", name), "rb").read()
            check(first == open(os.path.join(same, "checkpoints", name), "rb").read(),
                  f"checkpoint {name} byte-identical between identical runs")
    check(tree_digest(os.path.join(same + "-a", "adapter")) == tree_digest(os.path.join(same, "adapter")),
          "adapter byte-identical between identical runs")


# Each section on its own: an old binary that deletes a file one section relies on must not hide the others.
for section, title in [(defect_section_1, '1. --force deletes only what a run wrote'), (defect_section_2, '2. a corrupted checkpoint is refused, naming the file and dataset (and a valid older one)'), (defect_section_3, "3, 4. the run's fingerprint covers the eval data, the tokenizer and the judge model"), (defect_section_4, '6. step counts out of range are input errors'), (defect_section_5, '8. a judge prompt that cannot fit is refused before any stage'), (defect_section_6, '9. merge into a non-empty directory'), (defect_section_7, '10. a damaged stage line that parses is redone, not an internal error'), (defect_section_8, '11. a run_dir that is a file, or that cannot be created'), (defect_section_9, '15. a garbage run.json is unreadable, not "another run"'), (defect_section_10, '16. SIGTERM that arrives as the program starts is a stop (75), not a death (143)'), (defect_section_11, '17. identical runs write identical checkpoints')]:
    try:
        section()
    except Exception as e:  # noqa: BLE001 - reported as a failure of that section
        check(False, f"section '{title}' raised {type(e).__name__}: {e}")

shutil.rmtree(work, ignore_errors=True)
finish()
