"""slearn_dist report, and the report every slearn_dist run writes at its end (docs/pipeline.md, "The report"):
report.md's tables hold summary.json's numbers, the plots are real PNGs drawn by matplotlib, a full-data
baseline gives the side-by-side table, and what is not a finished run, not a baseline, or not the report's own
directory is refused with exit 2 without touching anything. Runs on the tiny fixture (a few seconds each).

matplotlib is a dependency (python3-matplotlib, launch/setup.sh): without it this test fails, it does not skip."""
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from clitest import BINARY, ROOT, check, finish, run

os.environ.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_rmaps_base_oversubscribe": "1"})
CONFIG = os.path.join(ROOT, "tests", "fixtures", "pipeline-tiny.yaml")
PLOTS = ["training.png", "accuracy.png", "stages.png", "judge.png"]

probe = subprocess.run(["/usr/bin/python3", "-I", "-c", "import matplotlib"], capture_output=True, text=True)
if not check(probe.returncode == 0, "matplotlib imports in /usr/bin/python3 (install python3-matplotlib: "
                                    f"launch/setup.sh) ({probe.stderr.strip()[-200:]})"):
    finish()

work = tempfile.mkdtemp(prefix="slearn-report-")


def pipeline(run_dir, *sets, np=2):
    # the fixture config draws no plots (report.plots: false); these runs do, unless a test says otherwise
    args = [BINARY, "run", "--config", CONFIG, "--set", f"run_dir={run_dir}", "--set", "report.plots=true", "--quiet"]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(["mpirun", "--oversubscribe", "-np", str(np)] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def one_line(err):
    lines = [l for l in err.splitlines() if l.strip()]
    return len(lines) == 1 and lines[0].startswith("slearn_dist: error: ")


def digest(top):
    out = {}
    for here, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(here, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, top)] = hashlib.sha256(f.read()).hexdigest()
    return out


def sections(md):
    """{heading: {row label: [cells]}} of report.md's tables."""
    out, current = {}, None
    for line in md.splitlines():
        if line.startswith("## "):
            current = out.setdefault(line[3:], {})
        elif line.startswith("| ") and current is not None and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            current[cells[0]] = cells[1:]
    return out


def png_size(path):
    """(width, height) of a PNG, or None when the file is not one."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def summary_of(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def tokens_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return sum(json.loads(l)["tokens"] for l in f if l.strip())


def pct(v):
    return "%.1f%%" % (100 * v)


main, base, rounds2 = (os.path.join(work, n) for n in ("main", "baseline", "rounds2"))
try:
    # ---- the report at the end of a run ----
    code, out, err = pipeline(main)
    check(code == 0, f"the run finishes (exit {code}: {err[-300:]})")
    report = os.path.join(main, "report")
    check(f"report: {report}/report.md" in out, f"the run says where its report is ({out[-300:]})")
    check("warning" not in err, f"no warning from the report ({err[-300:]})")
    s = summary_of(main)
    md = open(os.path.join(report, "report.md")).read()
    t = sections(md)
    t1 = t.get("Table 1: records, incorrect answers and cost", {})
    check(t1.get("records") == [str(s["records"])], f"Table 1 records = {s['records']} ({t1.get('records')})")
    check(t1.get("incorrect") == [str(s["incorrect"])], f"Table 1 incorrect = {s['incorrect']}")
    check(t1.get("incorrect rate") == [pct(s["incorrect_rate"])], f"Table 1 incorrect rate = {pct(s['incorrect_rate'])}")
    check(t1.get("trained on") == [f"{s['trained_on']} (train_on: incorrect)"], "Table 1 trained on")
    check(t1.get("devices") == ["2 rank(s), cpu"], f"Table 1 devices ({t1.get('devices')})")
    for stage in ("answer", "judge", "train", "eval"):
        st = s["stages"][stage]
        want = ["%.2f" % st["wall_seconds"], "%.4g" % st["device_hours"]]
        check(t1.get(stage) == want, f"Table 1 {stage}: {want} (got {t1.get(stage)})")
    order = [s["stages"][k] for k in ("answer", "judge", "train", "eval")]  # the report's order of addition
    total = ["%.2f" % sum(v["wall_seconds"] for v in order), "%.4g" % sum(v["device_hours"] for v in order)]
    check(t1.get("total") == total, f"Table 1 total {total} (got {t1.get('total')})")
    t2 = t.get("Table 2: accuracy before and after", {})
    check(t2.get("before training") == [pct(s["accuracy_before"])], "Table 2 accuracy before")
    check(t2.get("after training") == [pct(s["accuracy_after"])], "Table 2 accuracy after")
    check(t2.get("change") == ["%+.1f points" % (100 * (s["accuracy_after"] - s["accuracy_before"]))], "Table 2 change")
    check("Side by side" not in md, "no side-by-side table without --baseline")
    # the plots: referenced by relative path, real PNGs of a real size
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    check(sorted(referenced) == sorted(PLOTS), f"report.md shows the four plots by relative path ({referenced})")
    for name in PLOTS:
        path = os.path.join(report, name)
        size = png_size(path) if os.path.exists(path) else None
        check(size is not None and size[0] >= 300 and size[1] >= 200 and os.path.getsize(path) > 5000,
              f"{name} is a PNG of a real size ({size}, {os.path.getsize(path) if os.path.exists(path) else 0} bytes)")
    # the rule judge writes no scores: said so, verdicts drawn instead, nothing made up
    check("The judge wrote no scores" in md and "### Judge verdicts" in md, "no judge scores: report.md says so")
    series = json.load(open(os.path.join(report, "series.json")))
    with open(os.path.join(main, "metrics.jsonl")) as f:
        metrics = [json.loads(l) for l in f if l.strip()]
    check(series["training"][0]["step"] == [m["step"] for m in metrics] and
          series["training"][0]["loss"] == [m["loss"] for m in metrics] and
          series["training"][0]["learning_rate"] == [m["learning_rate"] for m in metrics],
          "series.json's loss and learning rate are metrics.jsonl's")
    answers_set = series["judge"][0]
    check(answers_set["incorrect"] == s["incorrect"] and answers_set["scores"] == [], "judge series: verdicts, no scores")
    manifest = json.load(open(os.path.join(report, "report.json")))
    check(sorted(manifest["files"] + ["report.json"]) == sorted(os.listdir(report)),
          f"report.json lists what the report directory holds ({manifest['files']})")

    # ---- the side-by-side table with a train_on: all baseline ----
    code, _, err = pipeline(base, "train_on=all", np=1)
    check(code == 0, f"the baseline run finishes ({err[-300:]})")
    code, out, err = run(["report", main, "--baseline", base])
    check(code == 0 and err == "", f"report --baseline: exit 0 ({code}: {err.strip()})")
    b = summary_of(base)
    md = open(os.path.join(report, "report.md")).read()
    side = sections(md).get("Side by side: this run and the full-data baseline", {})
    check(side.get("train_on") == ["incorrect", "all"], f"side by side: train_on ({side.get('train_on')})")
    check(side.get("trained-on records") == [str(s["trained_on"]), str(b["trained_on"])], "side by side: trained-on")
    check(side.get("training tokens (metrics.jsonl)") == [str(tokens_of(main)), str(tokens_of(base))],
          "side by side: training tokens")
    hours = [s["stages"]["train"]["device_hours"], b["stages"]["train"]["device_hours"]]
    check(side.get("train device-hours") == ["%.4g" % h for h in hours], "side by side: train device-hours")
    check(side.get("training cost / baseline's (device-hours)") == ["%.2f" % (hours[0] / hours[1]), "1.00"],
          f"side by side: ratio of training cost ({side.get('training cost / baseline' + chr(39) + 's (device-hours)')})")
    check(side.get("training cost / baseline's (tokens)") == ["%.2f" % (tokens_of(main) / tokens_of(base)), "1.00"],
          "side by side: ratio of training tokens")
    check(side.get("accuracy after") == [pct(s["accuracy_after"]), pct(b["accuracy_after"])], "side by side: accuracy")
    check(side.get("accuracy after, difference from baseline") ==
          ["%+.1f points" % (100 * (s["accuracy_after"] - b["accuracy_after"])), "-"], "side by side: difference")

    # ---- refusals: exit 2, one line, nothing touched ----
    before = digest(report)
    code, _, err = run(["report", main, "--baseline", main])
    check(code == 2 and one_line(err) and "train_on is incorrect, not all" in err,
          f"a baseline with train_on: incorrect is refused ({code}: {err.strip()})")
    code, _, err = run(["report", main, "--baseline", os.path.join(work, "nowhere")])
    check(code == 2 and one_line(err) and "nowhere" in err, f"a missing baseline is refused ({code}: {err.strip()})")
    unfinished = os.path.join(work, "unfinished")
    shutil.copytree(base, unfinished)
    os.remove(os.path.join(unfinished, "summary.json"))
    code, _, err = run(["report", main, "--baseline", unfinished])
    check(code == 2 and one_line(err) and "summary.json" in err, f"an unfinished baseline is refused ({err.strip()})")
    check(digest(report) == before, "refused reports leave the report directory as it was")
    code, _, err = run(["report", os.path.join(work, "no-such-run")])
    check(code == 2 and one_line(err) and "no-such-run" in err, f"a missing run dir is refused ({code}: {err.strip()})")
    code, _, err = run(["report", unfinished])
    check(code == 2 and one_line(err) and "summary.json" in err, f"a run without summary.json is refused ({err.strip()})")
    with open(os.path.join(unfinished, "summary.json"), "w") as f:
        f.write('{"records": 16, "incorr')
    code, _, err = run(["report", unfinished])
    check(code == 2 and one_line(err) and f"{unfinished}/summary.json" in err,
          f"a damaged summary.json is refused, naming it ({err.strip()})")
    # a file in report/ that the report did not write: refused by report, a warning (not a failure) for run
    notes = os.path.join(report, "notes.txt")
    with open(notes, "w") as f:
        f.write("mine\n")
    before = digest(report)
    code, _, err = run(["report", main])
    check(code == 2 and one_line(err) and "notes.txt" in err, f"a report dir holding a foreign file is refused ({err.strip()})")
    code, out, err = pipeline(main)  # everything is done: the run only resumes, then tries its report
    check(code == 0, f"a finished run run again still exits 0 ({code}: {err[-300:]})")
    check("slearn_dist: warning: no report written" in err and "notes.txt" in err and
          f"slearn_dist report {main}" in err, f"...with a warning naming the cause and the command ({err.strip()[-300:]})")
    check(digest(report) == before, "the foreign file and the earlier report are left as they were")
    os.remove(notes)

    # ---- --out, and plots that cannot be drawn ----
    elsewhere = os.path.join(work, "elsewhere")
    code, _, err = run(["report", main, "--out", elsewhere])
    check(code == 0 and os.path.exists(os.path.join(elsewhere, "report", "report.md")), f"--out ({err.strip()})")
    fake = os.path.join(work, "python-without-site")  # the system python3 without dist-packages: no matplotlib
    with open(fake, "w") as f:
        f.write('#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n')
    os.chmod(fake, 0o755)
    for python, needle in ((fake, "matplotlib cannot be imported"), (os.path.join(work, "no-python3"), "not found")):
        code, _, err = run(["report", main, "--out", elsewhere, "--python", python])
        check(code == 1 and one_line(err) and needle in err and "python3-matplotlib" in err,
              f"plots that cannot be drawn ({os.path.basename(python)}): exit 1 naming the package ({err.strip()})")
        left = sorted(os.listdir(os.path.join(elsewhere, "report")))
        text = open(os.path.join(elsewhere, "report", "report.md")).read()
        check(left == ["report.json", "report.md", "series.json"] and "The plots were not drawn" in text and
              "Table 1" in text, f"...report.md with the tables, no plots, saying why ({left})")

    # ---- rounds > 1: every round's loss, each round's accuracy ----
    code, _, err = pipeline(rounds2, "rounds=2")
    check(code == 0, f"the 2-round run finishes ({err[-300:]})")
    series = json.load(open(os.path.join(rounds2, "report", "series.json")))
    check([p["round"] for p in series["training"]] == [1, 2], "series.json has both rounds' training")
    check([r["round"] for r in series["rounds"]] == [1, 2], "series.json has both rounds' counts")
    rows = sections(open(os.path.join(rounds2, "report", "report.md")).read()).get(
        "Table 1: records, incorrect answers and cost", {})
    with open(os.path.join(rounds2, "round-2", "judgements.jsonl")) as f:
        wrong2 = sum(json.loads(l)["incorrect"] for l in f if l.strip())
    check(rows.get("2", [None, None])[1] == str(wrong2), f"the rounds table has round 2's incorrect ({rows.get('2')})")
    for name in PLOTS:
        check(png_size(os.path.join(rounds2, "report", name)) is not None, f"2 rounds: {name} drawn")

    # ---- report.plots: false: the tables at the end of the run, the plots later by slearn_dist report ----
    tables_only = os.path.join(work, "tables-only")
    code, out, err = pipeline(tables_only, "report.plots=false", np=1)
    check(code == 0 and "warning" not in err, f"a run with report.plots false finishes, no warning ({err[-300:]})")
    left = sorted(os.listdir(os.path.join(tables_only, "report")))
    text = open(os.path.join(tables_only, "report", "report.md")).read()
    check(left == ["report.json", "report.md", "series.json"], f"report.plots false: no PNG ({left})")
    check("Not drawn: the run's configuration says `report.plots: false`" in text and "Table 1" in text and
          f"slearn_dist report {tables_only}" in text, "...report.md has the tables and says how to draw the plots")
    done = subprocess.run([BINARY, "report", tables_only], capture_output=True, text=True, timeout=120)
    check(done.returncode == 0 and all(png_size(os.path.join(tables_only, "report", n)) for n in PLOTS),
          f"slearn_dist report draws them afterwards ({done.stderr[-300:]})")
finally:
    shutil.rmtree(work, ignore_errors=True)
finish()
