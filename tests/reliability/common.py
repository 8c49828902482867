"""Shared helpers of the reliability tests (standard library only): the commands, starting and killing 2-rank
jobs, watching a run directory's stage, and comparing a run directory with a reference byte for byte."""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "build", "bin", "slearn_dist")
SKIP = 77

os.environ.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                   "OMPI_MCA_rmaps_base_oversubscribe": "1",
                   # containers without ptrace: shared memory without single-copy (as the MPI tests do)
                   "OMPI_MCA_btl_vader_single_copy_mechanism": "none"})

DEMO = os.path.join(ROOT, "configs", "demo.yaml")
TINY = os.path.join(ROOT, "tests", "fixtures", "pipeline-tiny.yaml")
MEDQUAD = os.path.join(ROOT, "tests", "fixtures", "data", "medquad-tiny.jsonl")
TRAIN_TINY = os.path.join(ROOT, "configs", "train-tiny.yaml")

# The small, fast demo run (48 records, 24 for evaluation, 4 training steps, a checkpoint every 2), graded by the
# rule judge and with the report's tables only (no matplotlib): these tests are about the run directory's
# files, and run this command some hundred times. Model and data paths are absolute so that the command may
# run from any directory (run_dir may then be relative).
DEMO_SETTINGS = ["--set", f"model={os.path.join(ROOT, 'demo', 'model')}",
                 "--set", f"data.path={os.path.join(ROOT, 'demo', 'data', 'train.jsonl')}",
                 "--set", f"eval.data.path={os.path.join(ROOT, 'demo', 'data', 'eval.jsonl')}",
                 "--set", "data.max_records=48", "--set", "eval.data.max_records=24", "--set", "train.epochs=2",
                 "--set", "checkpoint.every_steps=2", "--set", "checkpoint.keep_last=2",
                 "--set", "answer.batch_size=8", "--set", "judge.kind=rule", "--set", "report.plots=false",
                 "--quiet"]

T0 = time.time()
sys.path.insert(0, os.path.join(ROOT, "tests", "cli"))
from clitest import check, failures  # noqa: E402,F401  (one pass/fail tally for every test script)
import clitest  # noqa: E402


def finish():
    print(f"{clitest._passed} passed, {len(clitest._failures)} failed (in {time.time() - T0:.1f} s)", flush=True)
    sys.exit(1 if clitest._failures else 0)


def progress(what):
    print(f"[{time.time() - T0:6.1f} s] {what}", flush=True)


def require_binary():
    """Waits up to a minute for the binary (it may be being relinked), or exits 77."""
    for _ in range(60):
        if os.path.isfile(BINARY) and os.access(BINARY, os.X_OK):
            return
        time.sleep(1)
    print(f"SKIP: {BINARY} does not exist")
    sys.exit(SKIP)


def demo_command(run_dir, np=2, extra=()):
    return ["mpirun", "--oversubscribe", "-np", str(np), BINARY, "run", "--config", DEMO,
            "--set", f"run_dir={run_dir}"] + DEMO_SETTINGS + list(extra)


def tiny_data(path, copies):
    """The fixture's 16 medical records `copies` times over (ids made unique)."""
    with open(MEDQUAD) as f:
        records = [json.loads(line) for line in f if line.strip()]
    with open(path, "w") as out:
        for copy in range(copies):
            for r in records:
                out.write(json.dumps(dict(r, id=f"{r['id']}-{copy}")) + "\n")


def tiny_self_command(run_dir, data, eval_records=12, extra=()):
    """The tiny fixture model judging itself: every stage, the judge included, takes a measurable time."""
    return ["mpirun", "--oversubscribe", "-np", "2", BINARY, "run", "--config", TINY, "--set", f"run_dir={run_dir}",
            "--set", f"model={os.path.join(ROOT, 'tests', 'fixtures', 'models', 'qwen2-gqa-tied')}",
            "--set", f"data.path={data}", "--set", f"eval.data.path={data}",
            "--set", f"eval.data.max_records={eval_records}", "--set", "judge.kind=self",
            "--set", "judge.max_new_tokens=24", "--set", "answer.long_prompt=truncate-left",
            "--set", "checkpoint.every_steps=3", "--quiet"] + list(extra)


class Result:
    def __init__(self, code, out, err, seconds):
        self.code, self.out, self.err, self.seconds = code, out, err, seconds

    @property
    def said(self):
        return said_lines(self.err + "\n" + self.out)

    def tail(self, n=800):
        text = (self.out + self.err).strip()
        return text[-n:]


LAUNCH_FAILED = "was unable to launch the specified application"


def wait_binary_stable():
    """Waits (up to two minutes) until the binary exists and has not changed for two seconds: another build
    may be relinking it."""
    deadline = time.time() + 120
    last = None
    while time.time() < deadline:
        try:
            st = os.stat(BINARY)
            now = (st.st_mtime, st.st_size)
        except OSError:
            now = None
        if now is not None and now == last and os.access(BINARY, os.X_OK):
            return
        last = now
        time.sleep(2)


def run(cmd, cwd=ROOT, timeout=300):
    """Runs cmd to its end in its own session (killed whole, ranks included, past the timeout). When mpirun could
    not even start the binary (it is being relinked by a build), waits for it and tries again (this is about
    the test machine, not the run: nothing of the run directory was touched)."""
    for attempt in range(5):
        started = time.time()
        job = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               errors="backslashreplace", start_new_session=True)
        try:
            out, err = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(job)
            out, err = job.communicate()
            err += f"\n[test: killed after {timeout} s]"
            return Result(124, out, err, time.time() - started)
        if job.returncode != 0 and (LAUNCH_FAILED in out + err or job.returncode == 126):
            print(f"[test: {BINARY} could not be started (being rebuilt?); waiting and trying again]", flush=True)
            wait_binary_stable()
            continue
        return Result(job.returncode, out, err, time.time() - started)
    return Result(job.returncode, out, err, time.time() - started)


class Job:
    """A job started in the background; its output goes to files (no pipe to fill up)."""

    def __init__(self, cmd, cwd=ROOT):
        self.dir = tempfile.mkdtemp(prefix="job-", dir=os.environ.get("SLEARN_RELIABILITY_TMP", "/tmp"))
        self.out_path, self.err_path = os.path.join(self.dir, "out"), os.path.join(self.dir, "err")
        self.started = time.time()
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        self.pid = self.proc.pid
        self.ended = None

    def poll(self):
        code = self.proc.poll()
        if code is not None and self.ended is None:
            self.ended = time.time()
        return code

    def wait(self, timeout):
        """The exit code, or None when it did not end in time (then the whole session is killed)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            self.proc.wait()
            return None
        finally:
            self.poll()

    def result(self):
        with open(self.out_path, errors="backslashreplace") as f:
            out = f.read()
        with open(self.err_path, errors="backslashreplace") as f:
            err = f.read()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.poll()
        return Result(self.proc.returncode, out, err, (self.ended or time.time()) - self.started)

    def launch_failed(self, result):
        """mpirun could not start the binary (another build is relinking it): not the run's doing."""
        return result.code not in (0, None) and (LAUNCH_FAILED in result.out + result.err or result.code == 126)


def session(sid):
    """The live processes (zombies left out) of session sid. A job started with start_new_session keeps every
    process it starts in its session: Open MPI gives each rank a process group of its own (so killpg on mpirun's
    group misses them), and a rank's own children (the report's plot script) stay there too."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            found.append(int(entry))
    return found


def kill_group(proc):
    """SIGKILL to the whole session of a job started with start_new_session (mpirun, its ranks, their children)."""
    for pid in [proc.pid] + session(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def children(pid):
    pids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pids += [int(p) for p in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return pids


def ranks(pid):
    """The slearn_dist processes mpirun (pid) started, by rank: {rank: pid}."""
    named = {}
    for child in children(pid):
        try:
            with open(f"/proc/{child}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            named[int(env[b"OMPI_COMM_WORLD_RANK"])] = child
        except (OSError, KeyError, ValueError):
            pass
    return named


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pids, timeout=60, sid=None):
    """Waits until none of pids runs (zombies count as gone), nor, with sid, any process of that session (what a
    killed job left running: a rank missed by ranks(), a rank's child); kills the rest past the timeout. True
    if all ended by themselves. Without this, an orphan of one kill could still be writing when the next
    attempt clears the run directory, and the test would blame the run for it."""
    deadline = time.time() + timeout
    def running():
        return [p for p in pids if alive(p)] + (session(sid) if sid is not None else [])
    while time.time() < deadline:
        if not running():
            return True
        time.sleep(0.02)
    for p in running():
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return False


def said_lines(text):
    """slearn_dist's own lines (mpirun's notes and progress output left out)."""
    return [l[l.index("slearn_dist:"):] for l in text.splitlines() if "slearn_dist:" in l]


# ---- stages, as seen from the run directory ----
STAGES = ["eval-before", "answer", "judge", "train", "eval-after"]


def stage_of(run_dir):
    """The stage a run is in, from the files it has written so far (a run that starts afresh)."""
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        return "done"
    if os.path.isdir(os.path.join(run_dir, "eval-after")):
        return "eval-after"
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) or os.path.isdir(os.path.join(run_dir, "checkpoints")):
        return "train"
    if glob.glob(os.path.join(run_dir, "judgements.rank-*.jsonl")):
        return "judge"
    if glob.glob(os.path.join(run_dir, "answers.rank-*.jsonl")):
        return "answer"
    if os.path.isdir(os.path.join(run_dir, "eval-before")):
        return "eval-before"
    return "start"


ORDER = ["start"] + STAGES + ["done"]


# ---- comparing run directories ----
SHARD = re.compile(r"(answers|judgements)\.rank-\d+\.jsonl$")


def ignored(rel):
    """Files whose bytes depend on timing or on the process: rank shards (line order), progress files, the lock,
    and the end-of-run report (report/: its tables and plots show the stage times; its own test is
    tests/cli/test_report.py)."""
    base = os.path.basename(rel)
    top = rel.replace(os.sep, "/").split("/")[0]
    return (SHARD.search(base) is not None or base.startswith(".progress.") or base == "run.lock"
            or top == "report" or top.startswith(("report.tmp.", "report.old.tmp.")))


def is_timing_key(key):
    return key in ("elapsed", "tokens_per_second", "wall_seconds", "device_hours") or key.endswith("_seconds") \
        or key.endswith("per_second") or key.endswith("_hours")


def strip_timing(value):
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if not is_timing_key(k)}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    return value


def timing_keys(value, prefix=""):
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if is_timing_key(k):
                found.append(prefix + k)
            found += timing_keys(v, prefix + k + ".")
    return found


def normalized(rel, data):
    """The comparable form of a file: metrics.jsonl and summary.json without their timing fields."""
    base = os.path.basename(rel)
    try:
        if base == "metrics.jsonl":
            text = data.decode()
            return json.dumps([strip_timing(json.loads(l)) for l in text.split("\n") if l.strip()], sort_keys=True)
        if base == "summary.json":
            return json.dumps(strip_timing(json.loads(data)), sort_keys=True)
    except (ValueError, UnicodeDecodeError) as e:
        return f"<unparseable: {e}>"
    return hashlib.sha256(data).hexdigest()


def keep_reference(ref, run_dir, ref_dir):
    """After the uninterrupted run `ref` (a Result) wrote run_dir: ends the script unless it finished, moves
    run_dir to ref_dir and returns the reference tree (see tree)."""
    if not check(ref.code == 0, f"the uninterrupted run finishes (exit {ref.code}: {ref.tail()})"):
        finish()
    os.rename(run_dir, ref_dir)
    return tree(ref_dir)


def tree(run_dir, skip_ignored=True):
    """{relative path: bytes-derived key} of every file under run_dir."""
    out = {}
    for here, dirs, files in os.walk(run_dir):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(here, d))]:
            path = os.path.join(here, name)
            rel = os.path.relpath(path, run_dir)
            if skip_ignored and ignored(rel):
                continue
            try:
                with open(path, "rb") as f:
                    out[rel] = normalized(rel, f.read())
            except OSError as e:
                out[rel] = f"<unreadable: {e}>"
        for d in dirs:
            if not os.listdir(os.path.join(here, d)):
                out[os.path.relpath(os.path.join(here, d), run_dir) + "/"] = "<empty dir>"
    return out


def raw_tree(run_dir):
    """{relative path: sha256 of the bytes} of every file (nothing left out but run.lock)."""
    out = {}
    for here, dirs, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(here, name)
            rel = os.path.relpath(path, run_dir)
            if os.path.basename(rel) == "run.lock":
                continue
            with open(path, "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()
        for d in dirs:
            out[os.path.relpath(os.path.join(here, d), run_dir) + "/"] = "dir"
    return out


def differences(run_dir, ref_dir, ref_tree=None):
    """What differs between run_dir's outputs and the reference's: a list of short descriptions."""
    ref = ref_tree if ref_tree is not None else tree(ref_dir)
    got = tree(run_dir)
    diffs = []
    for rel in sorted(set(ref) | set(got)):
        if rel not in got:
            diffs.append(f"{rel} missing")
        elif rel not in ref:
            diffs.append(f"{rel} extra")
        elif got[rel] != ref[rel]:
            diffs.append(f"{rel} differs")
    return diffs


def first_difference(a_path, b_path):
    """How two versions of a file differ (for the report): the steps of metrics.jsonl, the keys of summary.json,
    else the sizes and the first differing byte."""
    try:
        with open(a_path, "rb") as f:
            a = f.read()
        with open(b_path, "rb") as f:
            b = f.read()
    except OSError as e:
        return str(e)
    base = os.path.basename(a_path)
    try:
        if base == "metrics.jsonl":
            def steps(data):
                out = []
                for line in data.split(b"\n"):
                    if line.strip():
                        try:
                            out.append(json.loads(line).get("step"))
                        except ValueError:
                            out.append("<unparseable>")
                return out
            sa, sb = steps(a), steps(b)
            if sa != sb:
                return f"steps {sa} vs {sb}"
            la = [strip_timing(json.loads(l)) for l in a.split(b"\n") if l.strip()]
            lb = [strip_timing(json.loads(l)) for l in b.split(b"\n") if l.strip()]
            bad = [x.get("step") for x, y in zip(la, lb) if x != y]
            return f"same steps, values differ at steps {bad}"
        if base == "summary.json":
            ja, jb = strip_timing(json.loads(a)), strip_timing(json.loads(b))
            keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k))
            return "keys differ: " + ", ".join(f"{k} {ja.get(k)!r} vs {jb.get(k)!r}" for k in keys)
    except (ValueError, AttributeError, UnicodeDecodeError) as e:
        return f"unparseable ({e})"
    n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return f"sizes {len(a)} vs {len(b)}, first difference at byte {n}"


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        subprocess.run(["rm", "-rf", path])


def workdir(prefix):
    base = os.environ.get("SLEARN_RELIABILITY_TMP", "/tmp")
    return tempfile.mkdtemp(prefix=prefix, dir=base)
