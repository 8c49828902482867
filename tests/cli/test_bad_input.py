"""The bad-input catalogue of docs/failures.md: every broken input `slearn_dist run` can be given (configuration,
model, tokenizer, data) stops the command before it touches the run directory, with exit code 2 and one line on
stderr naming the file, line, key or tensor at fault. Each case also runs with --force (which empties a run
directory before it starts over), and a run directory left by a good run must keep byte-identical files.

The messages in docs/failures.md are the ones this test sees, word for word: run it with SLEARN_UPDATE_DOCS=1
to rewrite that table after changing a message. A few cases also run under `mpirun -np 2`: one line in all,
not one per rank, and no hang."""
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from clitest import BINARY, FIXTURES, ROOT, check, check_doc_section, error_table, finish

MODEL = os.path.join(FIXTURES, "models", "qwen2-gqa-tied")
DATA = os.path.join(FIXTURES, "data", "medquad-tiny.jsonl")
GB18030 = os.path.join(FIXTURES, "datasets", "gb18030.jsonl")
DOC = os.path.join(ROOT, "docs", "failures.md")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
PREFIX = "slearn_dist: error: "
SLEARN = os.path.abspath(BINARY)  # the commands run in the cases' directories

# The configuration of every case: paths relative to the case's directory (the working directory of the
# command), so that messages name model/..., data.jsonl and run.yaml as a user would see them. The run directory
# is shared: a good run made it first, and no failing case may change it.
BASE_CONFIG = """\
model: model
run_dir: ../good-run
threads: 1
data:
  path: data.jsonl
  on_bad_record: error
answer:
  max_new_tokens: 4
  batch_size: 4
judge:
  kind: rule
lora:
  r: 2
  alpha: 4
  dropout: 0.0
train:
  epochs: 1
  global_batch_size: 4
  micro_batch_size: 2
max_length: 64
"""

work = tempfile.mkdtemp(prefix="slearn-bad-input-")
cases_dir = os.path.join(work, "cases")
base_dir = os.path.join(cases_dir, "base")
run_dir = os.path.join(cases_dir, "good-run")


def write(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w", encoding=None if isinstance(data, bytes) else "utf-8") as f:
        f.write(data)


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


os.makedirs(base_dir)
shutil.copytree(MODEL, os.path.join(base_dir, "model"))
with open(DATA, encoding="utf-8") as f:
    GOOD_LINES = [line.rstrip("\n") for line in f if line.strip()][:4]
write(os.path.join(base_dir, "data.jsonl"), "\n".join(GOOD_LINES) + "\n")
write(os.path.join(base_dir, "run.yaml"), BASE_CONFIG)


# ---- safetensors, with the standard library ----
def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def write_safetensors(path, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    write(path, struct.pack("<Q", len(text)) + text + data)


def edit_header(case, edit, extra_data=b""):
    """Rewrites the header of the case's model.safetensors with edit(header); the data stays as it was."""
    path = os.path.join(case, "model", "model.safetensors")
    header, data = read_safetensors(path)
    edit(header)
    write_safetensors(path, header, data + extra_data)


def drop_tensor(case, name):
    """A valid file without one tensor: the others packed again from byte 0."""
    path = os.path.join(case, "model", "model.safetensors")
    header, data = read_safetensors(path)
    out_header, out_data = {"__metadata__": header.pop("__metadata__")}, b""
    for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        if key == name:
            continue
        begin, end = info["data_offsets"]
        out_header[key] = dict(info, data_offsets=[len(out_data), len(out_data) + end - begin])
        out_data += data[begin:end]
    write_safetensors(path, out_header, out_data)


def set_json(path, edit):
    value = json.loads(read_text(path))
    edit(value)
    write(path, json.dumps(value, indent=2))


def set_data_lines(case, lines, data=None):
    write(os.path.join(case, "data.jsonl"), data if data is not None else "\n".join(lines) + "\n")


def replace_config(case, old, new):
    path = os.path.join(case, "run.yaml")
    text = read_text(path)
    assert old in text, old
    write(path, text.replace(old, new, 1))


def line_of(text, needle):
    return 1 + text[:text.index(needle)].count("\n")


def record(question=None, answer=None, id_=None):
    r = {}
    if id_ is not None:
        r["id"] = id_
    if question is not None:
        r["question"] = question
    if answer is not None:
        r["answer"] = answer
    return json.dumps(r, ensure_ascii=False)


UP = "model.layers.0.mlp.up_proj.weight"
LONG_QUESTION = " ".join(["What are the symptoms of chronic obstructive pulmonary disease?"] * 40)

# Each case: (group, description in docs/failures.md, how to break the base directory, extra arguments,
# strings the message must hold). The description is the table's key.
CASES = [
    ("config", "unknown key",
     lambda c: replace_config(c, "  alpha: 4\n", "  alpha: 4\n  rank: 8\n"), [],
     ["run.yaml", '"lora.rank"', f"line {line_of(BASE_CONFIG, '  alpha: 4') + 1}", "known keys in lora"]),
    ("config", "value of the wrong type",
     lambda c: replace_config(c, "  epochs: 1\n", "  epochs: five\n"), [],
     ["run.yaml", '"train.epochs"', f"line {line_of(BASE_CONFIG, '  epochs: 1')}", "must be an integer", '"five"']),
    ("config", "missing required key",
     lambda c: replace_config(c, "  path: data.jsonl\n", ""), [],
     ["run.yaml", 'missing required key "data.path"']),
    ("config", "configuration file not found",
     lambda c: os.remove(os.path.join(c, "run.yaml")), [],
     ["run.yaml", "cannot read the configuration file"]),
    ("model", "config.json missing",
     lambda c: os.remove(os.path.join(c, "model", "config.json")), [],
     ["model/config.json", "not found"]),
    ("model", "unsupported model_type",
     lambda c: set_json(os.path.join(c, "model", "config.json"), lambda j: j.update(model_type="gpt2")), [],
     ["model/config.json", '"gpt2"', "not supported", "qwen2, llama"]),
    ("model", "safetensors file truncated",
     lambda c: os.truncate(os.path.join(c, "model", "model.safetensors"), 400000), [],
     ["model/model.safetensors", "truncated", "400000 bytes"]),
    ("model", "safetensors header length past the end of the file",
     lambda c: write(os.path.join(c, "model", "model.safetensors"),
                     struct.pack("<Q", 9999) + b'{"a": 1}'), [],
     ["model/model.safetensors", "header length 9999", "past the end of the file"]),
    ("model", "overlapping tensor offsets",
     lambda c: edit_header(c, lambda h: h[UP].update(data_offsets=[x - 8 for x in h[UP]["data_offsets"]])), [],
     ["model/model.safetensors", f'"{UP}"', "overlaps", '"model.layers.0.mlp.gate_proj.weight"']),
    ("model", "gap between tensor offsets",
     lambda c: edit_header(c, lambda h: h["model.norm.weight"].update(
         data_offsets=[x + 16 for x in h["model.norm.weight"]["data_offsets"]]), extra_data=bytes(16)), [],
     ["model/model.safetensors", '"model.norm.weight"', "gap of 16 bytes"]),
    ("model", "byte count does not match dtype and shape",
     lambda c: edit_header(c, lambda h: h[UP].update(dtype="F16")), [],
     ["model/model.safetensors", f'"{UP}"', "F16", "bytes"]),
    ("model", "tensor shape differs from config.json",
     lambda c: edit_header(c, lambda h: h[UP].update(shape=[64, 176])), [],
     ["model/model.safetensors", f'"{UP}"', "[64, 176]", "expected [176, 64]"]),
    ("model", "tensor dtype not floating point",
     lambda c: edit_header(c, lambda h: h[UP].update(dtype="I32")), [],
     ["model/model.safetensors", f'"{UP}"', "I32"]),
    ("model", "tensor missing",
     lambda c: drop_tensor(c, UP), [],
     ["model", f'"{UP}"', "missing from the weights", "model/model.safetensors"]),
    ("model", "shard index names a missing file",
     lambda c: (os.rename(os.path.join(c, "model", "model.safetensors"),
                          os.path.join(c, "model", "model-00001-of-00002.safetensors")),
                write(os.path.join(c, "model", "model.safetensors.index.json"), json.dumps({"weight_map": {
                    name: ("model-00002-of-00002.safetensors" if name == "model.norm.weight"
                           else "model-00001-of-00002.safetensors")
                    for name in read_safetensors(os.path.join(c, "model", "model-00001-of-00002.safetensors"))[0]
                    if name != "__metadata__"}}))), [],
     ["model/model.safetensors.index.json", '"model-00002-of-00002.safetensors"', '"model.norm.weight"',
      "does not exist"]),
    ("model", "tokenizer.json missing",
     lambda c: os.remove(os.path.join(c, "model", "tokenizer.json")), [],
     ["model/tokenizer.json"]),
    ("model", "tokenizer.json not JSON",
     lambda c: write(os.path.join(c, "model", "tokenizer.json"), "<html>Not found</html>\n"), [],
     ["model/tokenizer.json", "not valid JSON"]),
    ("model", "tokenizer.json without a model section",
     lambda c: set_json(os.path.join(c, "model", "tokenizer.json"), lambda j: j.pop("model")), [],
     ["model/tokenizer.json", '"model"', "missing"]),
    ("data", "invalid JSON line",
     lambda c: set_data_lines(c, GOOD_LINES[:2] + ['{"id": "x3", "question": "Why?", "answer": }'] + GOOD_LINES[3:]),
     [], ["data.jsonl:3", "invalid JSON", "column"]),
    ("data", "invalid UTF-8",
     lambda c: set_data_lines(c, None, data=(GOOD_LINES[0] + "\n").encode() +
                              b'{"id": "x2", "question": "caf\xe9 au lait?", "answer": "a"}\n'), [],
     ["data.jsonl:2", "invalid UTF-8", "0xE9"]),
    ("data", "file in another encoding (GB18030)",
     lambda c: shutil.copy(GB18030, os.path.join(c, "data.jsonl")), [],
     ["data.jsonl:1", "not UTF-8", "iconv -f GB18030 -t UTF-8"]),
    ("data", "empty question",
     lambda c: set_data_lines(c, GOOD_LINES[:1] + [record(" ", "an answer", "x2")] + GOOD_LINES[2:]), [],
     ["data.jsonl:2", 'question field "question" is empty']),
    ("data", "answer missing",
     lambda c: set_data_lines(c, GOOD_LINES[:1] + [record("What is it?", None, "x2")] + GOOD_LINES[2:]), [],
     ["data.jsonl:2", 'missing answer field "answer"']),
    ("data", "duplicate id",
     lambda c: set_data_lines(c, GOOD_LINES[:2] + [record("Again?", "yes", json.loads(GOOD_LINES[0])["id"])]), [],
     ["data.jsonl:3", "duplicate id", json.loads(GOOD_LINES[0])["id"], "line 1"]),
    ("data", "question longer than the model's context (answer.long_prompt: error)",
     lambda c: set_data_lines(c, GOOD_LINES[:1] + [record(LONG_QUESTION, "COPD", "long-1")] + GOOD_LINES[1:]), [],
     ["data.jsonl:2", '"long-1"', "tokens", "context of 256", "truncate-left"]),
    ("data", "every question's prompt fills max_length",
     lambda c: replace_config(c, "max_length: 64\n", "max_length: 8\n"), [],
     ["data.jsonl", "no record can be trained on", "max_length (8 tokens)", "raise max_length"]),
    ("data", "empty data file",
     lambda c: set_data_lines(c, None, data=""), [],
     ["data.jsonl", "no records"]),
    ("data", "no record left after skipping bad ones (on_bad_record: skip)",
     lambda c: (replace_config(c, "on_bad_record: error", "on_bad_record: skip"),
                set_data_lines(c, [record(f"Question {i}?", None, f"q{i}") for i in range(3)])), [],
     ["data.jsonl", "no usable records", "all 3", "line 1"]),
    ("run_dir", "run_dir holds another run (without --force)",
     lambda c: None, ["--set", "lora.r=8"],
     ["../good-run", "another config", "--force"]),
]
ONLY_WITHOUT_FORCE = {"run_dir holds another run (without --force)"}  # --force is what this case asks for
MPI_CASES = ["safetensors file truncated", "invalid JSON line", "unknown key"]


def tree_hashes(top):
    """Every file and directory under top, with the SHA-256 of each file's bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), top) + "/"] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, top)] = hashlib.sha256(f.read()).hexdigest()
    return out


def slearn(case_dir, args, mpi_ranks=0, timeout=120):
    command = [SLEARN, "run", "--config", "run.yaml", "--quiet"] + args
    env = dict(os.environ)
    if mpi_ranks:
        command = ["mpirun", "--oversubscribe", "-np", str(mpi_ranks)] + command
        env.update(MPI_ENV)
    try:
        done = subprocess.run(command, cwd=case_dir, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout} s"
    return done.returncode, done.stdout, done.stderr


# ---- a good run first: its directory must survive every bad input ----
code, out, err = slearn(base_dir, [])
check(code == 0, f"the good run finishes (stderr: {err[-600:]})")
good = tree_hashes(run_dir)
check("run.json" in good and "adapter/adapter_model.safetensors" in good, "the good run wrote its outputs")

messages = {}
for group, name, breaker, args, must_hold in CASES:
    case_dir = os.path.join(cases_dir, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
    shutil.copytree(base_dir, case_dir)
    breaker(case_dir)
    seen = []
    for force in ([], ["--force"]) if name not in ONLY_WITHOUT_FORCE else ([],):
        code, out, err = slearn(case_dir, args + force)
        label = f"{group}: {name}{' (--force)' if force else ''}"
        lines = [line for line in err.splitlines() if line.strip()]
        check(code == 2, f"{label}: exit code 2, got {code} (stderr: {err.strip()[-600:]})")
        check(len(lines) == 1 and lines[0].startswith(PREFIX),
              f"{label}: exactly one stderr line starting with {PREFIX!r}, got {lines}")
        message = lines[0][len(PREFIX):] if lines and lines[0].startswith(PREFIX) else err.strip()
        for needle in must_hold:
            check(needle in message, f"{label}: the message names {needle!r}: {message}")
        check(tree_hashes(run_dir) == good, f"{label}: the existing run directory is unchanged")
        seen.append(message)
    check(len(set(seen)) == 1, f"{group}: {name}: the same message with and without --force: {seen}")
    messages[name] = (group, seen[0])

# ---- under mpirun: one line, not one per rank; a non-zero exit; no hang ----
mpi_messages = {}
if shutil.which("mpirun"):
    for name in MPI_CASES:
        case_dir = os.path.join(cases_dir, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
        code, out, err = slearn(case_dir, ["--force"], mpi_ranks=2, timeout=90)
        ours = [line for line in err.splitlines() if line.startswith("slearn_dist:")]
        check(code is not None, f"mpirun -np 2, {name}: finishes (no hang)")
        check(code not in (None, 0), f"mpirun -np 2, {name}: non-zero exit, got {code}")
        check(len(ours) == 1, f"mpirun -np 2, {name}: one slearn_dist line for both ranks, got {ours}")
        check(ours[:1] == [PREFIX + messages[name][1]],
              f"mpirun -np 2, {name}: the same line as a single process: {ours}")
        check(tree_hashes(run_dir) == good, f"mpirun -np 2, {name}: the existing run directory is unchanged")
else:
    print("mpirun not found: the MPI cases are skipped", file=sys.stderr)


# ---- docs/failures.md holds these messages ----
check_doc_section(DOC, "bad_input_catalogue", error_table(CASES, messages))

shutil.rmtree(work)
finish()
