"""More bad input (issue 10, defects 7, 13, 14 and 15b, duplicate keys in records, symlink loops): each case breaks
a copy of the tiny fixture model, its tokenizer, the data or the configuration, runs `slearn_dist generate` or
`slearn_dist run` on it, and checks exit code 2, exactly one stderr line `slearn_dist: error: ...` and the names the
line must hold (the file, key, option or token at fault). `run` cases also check that the run directory was not
created: the inputs are refused before anything is written.

The messages are listed word for word in docs/failures.md (the section after the catalogue); run with
SLEARN_UPDATE_DOCS=1 to rewrite that table after changing a message."""
import json
import os
import re
import shutil
import subprocess
import tempfile

from clitest import BINARY, FIXTURES, ROOT, check, check_doc_section, error_table, finish

MODEL = os.path.join(FIXTURES, "models", "qwen2-gqa-tied")
DATA = os.path.join(FIXTURES, "data", "medquad-tiny.jsonl")
DOC = os.path.join(ROOT, "docs", "failures.md")
PREFIX = "slearn_dist: error: "
SLEARN = os.path.abspath(BINARY)  # the commands run in the cases' directories

# Paths relative to the case's directory (the working directory), so messages name model/..., data.jsonl, run.yaml.
BASE_CONFIG = """\
model: model
run_dir: out
threads: 1
data:
  path: data.jsonl
answer:
  max_new_tokens: 4
  batch_size: 4
judge:
  kind: rule
lora:
  r: 2
  alpha: 4
train:
  epochs: 1
  global_batch_size: 4
  micro_batch_size: 2
max_length: 64
"""
GENERATE = ["generate", "--model", "model", "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--threads", "1",
            "--quiet"]
RUN = ["run", "--config", "run.yaml", "--quiet"]

work = tempfile.mkdtemp(prefix="slearn-bad-input-more-")
base_dir = os.path.join(work, "base")


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def set_json(path, edit):
    value = json.loads(read_text(path))
    edit(value)
    write(path, json.dumps(value, indent=2))


os.makedirs(base_dir)
shutil.copytree(MODEL, os.path.join(base_dir, "model"))
with open(DATA, encoding="utf-8") as f:
    GOOD_LINES = [line.rstrip("\n") for line in f if line.strip()][:4]
write(os.path.join(base_dir, "data.jsonl"), "\n".join(GOOD_LINES) + "\n")
write(os.path.join(base_dir, "run.yaml"), BASE_CONFIG)


def model_json(case, name, edit):
    set_json(os.path.join(case, "model", name), edit)


def loop(case, relative):
    """Replaces case/relative by a symbolic link to itself."""
    path = os.path.join(case, relative)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    os.symlink(os.path.basename(path), path)


def add_token(spec, id_, content):
    spec["added_tokens"].append({"id": id_, "content": content, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})


def replace_config(case, old, new):
    path = os.path.join(case, "run.yaml")
    text = read_text(path)
    assert old in text, old
    write(path, text.replace(old, new, 1))


def replace_config_bytes(case, old, new):
    path = os.path.join(case, "run.yaml")
    with open(path, "rb") as f:
        data = f.read()
    assert old in data, old
    with open(path, "wb") as f:
        f.write(data.replace(old, new, 1))


def data_lines(case, lines, name="data.jsonl"):
    write(os.path.join(case, name), "\n".join(lines) + "\n")


def as_array(case):
    """The data as a JSON array in data.json, with a duplicate key in its third element."""
    records = [json.dumps(json.loads(line), ensure_ascii=False) for line in GOOD_LINES]
    records[2] = records[2][:-1] + ', "answer": "again"}'
    write(os.path.join(case, "data.json"), "[\n" + ",\n".join(records) + "\n]\n")
    replace_config(case, "path: data.jsonl", "path: data.json")


FIRST = json.loads(GOOD_LINES[0])
DUPLICATE = '{"id": "dup-1", "question": "a", "question": "b", "answer": "c"}'
NESTED = ('{"id": "dup-2", "conversations": [{"from": "human", "value": "q"}, '
          '{"from": "gpt", "value": "a", "value": "b"}]}')

# Each case: (group, description in docs/failures.md, command, how to break the copy, strings the message holds).
CASES = [
    # defect 7: token ids of the tokenizer the model has no embedding for
    ("tokenizer", "added token id >= the model's vocab_size (generate)", GENERATE,
     lambda c: model_json(c, "tokenizer.json", lambda t: add_token(t, 600, "<|tool|>")),
     ["model/tokenizer.json", '"<|tool|>"', "600", "vocab_size", "480"]),
    ("tokenizer", "prompt id >= the model's vocab_size (generate --prompt-ids)",
     ["generate", "--model", "model", "--prompt-ids", "5,480", "--quiet"], lambda c: None,
     ["--prompt-ids 5,480", "token id 480", "model/config.json", "vocab_size 480"]),
    # defect 13: sampling options; a BPE model without merges
    ("options", "--temperature nan", GENERATE + ["--temperature", "nan"], lambda c: None, ["--temperature", "nan"]),
    ("options", "--temperature inf", GENERATE + ["--temperature", "inf"], lambda c: None, ["--temperature", "inf"]),
    ("options", "--temperature -0.5", GENERATE + ["--temperature", "-0.5"], lambda c: None, ["--temperature", "-0.5"]),
    ("options", "--top-p nan", GENERATE + ["--top-p", "nan"], lambda c: None, ["--top-p", "nan"]),
    ("options", "--top-p inf", GENERATE + ["--top-p", "inf"], lambda c: None, ["--top-p", "inf"]),
    ("options", "--top-p 0", GENERATE + ["--top-p", "0"], lambda c: None, ["--top-p", "(0, 1]"]),
    ("options", "--top-p 1.5", GENERATE + ["--top-p", "1.5"], lambda c: None, ["--top-p", "1.5"]),
    ("config", "answer.temperature: .nan (run)", RUN,
     lambda c: replace_config(c, "  max_new_tokens: 4\n", "  max_new_tokens: 4\n  temperature: .nan\n"),
     ["run.yaml", '"answer.temperature"', "finite"]),
    ("config", "answer.top_p: .inf (run)", RUN,
     lambda c: replace_config(c, "  max_new_tokens: 4\n", "  max_new_tokens: 4\n  top_p: .inf\n"),
     ["run.yaml", '"answer.top_p"', "finite"]),
    ("tokenizer", "BPE model without merges (generate)", GENERATE,
     lambda c: model_json(c, "tokenizer.json", lambda t: t["model"].pop("merges")),
     ["model/tokenizer.json", "model.merges", "missing"]),
    ("tokenizer", "BPE model without merges (run)", RUN,
     lambda c: model_json(c, "tokenizer.json", lambda t: t["model"].pop("merges")),
     ["model/tokenizer.json", "model.merges", "missing"]),
    # defect 14: config.json's sizes against the weights, before anything is allocated
    ("model", "vocab_size 2^40 (generate)", GENERATE,
     lambda c: model_json(c, "config.json", lambda j: j.update(vocab_size=2 ** 40)),
     ["model/config.json", "vocab_size is 1099511627776", '"model.embed_tokens.weight"', "480 rows"]),
    ("model", "vocab_size 2^40 (run)", RUN,
     lambda c: model_json(c, "config.json", lambda j: j.update(vocab_size=2 ** 40)),
     ["model/config.json", "vocab_size is 1099511627776", '"model.embed_tokens.weight"']),
    ("model", "hidden_size 2^40", GENERATE,
     lambda c: model_json(c, "config.json", lambda j: j.update(hidden_size=2 ** 40)),
     ["model/config.json", '"hidden_size"', "at most"]),
    ("model", "intermediate_size disagrees with the weights", GENERATE,
     lambda c: model_json(c, "config.json", lambda j: j.update(intermediate_size=2 ** 24)),
     ["model/model.safetensors", '"model.layers.0.mlp.gate_proj.weight"', "[16777216, 64]"]),
    ("model", "num_hidden_layers 65536", GENERATE,
     lambda c: model_json(c, "config.json", lambda j: j.update(num_hidden_layers=65536)),
     ['"model.layers.2.input_layernorm.weight"', "missing"]),
    # defect 15b: a NUL in a YAML string
    ("config", "NUL in a string value (run_dir: \"a\\0b\")", RUN,
     lambda c: replace_config(c, "run_dir: out\n", 'run_dir: "a\\0b"\n'),
     ["run.yaml", '"run_dir"', "line 2", "NUL"]),
    # fuzz_config: a string that is not UTF-8 could not be written back to the run's configuration faithfully
    ("config", "a byte that is not UTF-8 in a string value (path: data\\xff.jsonl)", RUN,
     lambda c: replace_config_bytes(c, b"path: data.jsonl\n", b"path: data\xff.jsonl\n"),
     ["run.yaml", '"data.path"', "valid UTF-8"]),
    # duplicate keys in one data record
    ("data", "duplicate key in a JSONL record", RUN,
     lambda c: data_lines(c, GOOD_LINES[:1] + [DUPLICATE] + GOOD_LINES[1:]),
     ["data.jsonl:2", 'duplicate key "question"']),
    ("data", "duplicate key in a nested object", RUN,
     lambda c: data_lines(c, GOOD_LINES[:2] + [NESTED]),
     ["data.jsonl:3", 'duplicate key "value"', '"conversations"']),
    ("data", "duplicate key in a JSON array element", RUN, as_array,
     ["data.json:", "array element 3", 'duplicate key "answer"']),
    # symlink loops where a file or directory should be
    ("model", "config.json is a symlink loop", GENERATE, lambda c: loop(c, "model/config.json"),
     ["model/config.json", "symlink loop"]),
    ("model", "model directory is a symlink loop (generate)", GENERATE, lambda c: loop(c, "model"),
     ["model", "symlink loop"]),
    ("model", "model directory is a symlink loop (run)", RUN, lambda c: loop(c, "model"),
     ["model", "symlink loop"]),
    ("model", "tokenizer.json is a symlink loop (generate)", GENERATE, lambda c: loop(c, "model/tokenizer.json"),
     ["model/tokenizer.json", "symlink loop"]),
    ("model", "tokenizer.json is a symlink loop (run)", RUN, lambda c: loop(c, "model/tokenizer.json"),
     ["model/tokenizer.json", "symlink loop"]),
    ("model", "model.safetensors is a symlink loop", GENERATE, lambda c: loop(c, "model/model.safetensors"),
     ["model/model.safetensors", "symlink loop"]),
    ("data", "data file is a symlink loop", RUN, lambda c: loop(c, "data.jsonl"),
     ["data.jsonl", "symlink loop"]),
    ("config", "configuration file is a symlink loop", RUN, lambda c: loop(c, "run.yaml"),
     ["run.yaml", "symlink loop"]),
]


def slearn(case_dir, args, timeout=120):
    try:
        done = subprocess.run([SLEARN] + args, cwd=case_dir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout} s"
    return done.returncode, done.stdout, done.stderr


messages = {}
for group, name, args, breaker, must_hold in CASES:
    case_dir = os.path.join(work, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
    shutil.copytree(base_dir, case_dir, symlinks=True)
    breaker(case_dir)
    code, out, err = slearn(case_dir, args)
    label = f"{group}: {name}"
    lines = [line for line in err.splitlines() if line.strip()]
    check(code == 2, f"{label}: exit code 2, got {code} (stderr: {err.strip()[-600:]})")
    check(len(lines) == 1 and lines[0].startswith(PREFIX),
          f"{label}: exactly one stderr line starting with {PREFIX!r}, got {lines}")
    message = lines[0][len(PREFIX):] if lines and lines[0].startswith(PREFIX) else err.strip()
    for needle in must_hold:
        check(needle in message, f"{label}: the message names {needle!r}: {message}")
    if args is RUN:
        check(not os.path.lexists(os.path.join(case_dir, "out")), f"{label}: no run directory was created")
    messages[name] = (group, message)

# The good inputs pass (the breakers, not the base, are what fail).
code, out, err = slearn(base_dir, GENERATE)
check(code == 0, f"the unbroken model generates (stderr: {err.strip()[-600:]})")
empty = os.path.join(work, "empty-merges")
shutil.copytree(base_dir, empty)
model_json(empty, "tokenizer.json", lambda t: t["model"].update(merges=[]))
code, out, err = slearn(empty, GENERATE)
check(code == 0, f"an empty merges list is valid (stderr: {err.strip()[-600:]})")


# ---- docs/failures.md holds these messages ----
check_doc_section(DOC, "bad_input_more", error_table(CASES, messages))

shutil.rmtree(work)
finish()
