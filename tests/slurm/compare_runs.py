"""Compares two pipeline run directories the way tests/cli/test_pipeline_cli.py does: the same answers,
judgements and selected records, every record once, the same counts, adapters within 1e-5.

    python3 compare_runs.py REFERENCE_DIR OTHER_DIR WORLD_SIZE
Prints one line per check; exits 1 when any failed. Standard library only."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
from runfiles import f32_tensors as tensors  # noqa: E402


def read(run_dir, name):
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def main():
    reference, other, world_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    failures = []

    def check(condition, what):
        print(("ok    " if condition else "FAIL  ") + what)
        if not condition:
            failures.append(what)

    summaries = [read(d, "summary.json") for d in (reference, other)]
    check(summaries[1] is not None, f"{other}/summary.json present")
    if summaries[0] is None or summaries[1] is None:
        return 1
    a, b = (json.loads(s) for s in summaries)
    for key in ("records", "bad_records", "incorrect", "trained_on", "accuracy_before", "accuracy_after"):
        check(a.get(key) == b.get(key), f"summary {key}: {b.get(key)} (reference {a.get(key)})")
    check(b.get("world_size") == world_size, f"summary world_size {b.get('world_size')} == {world_size}")
    for name in ("answers.jsonl", "judgements.jsonl", "incorrect.jsonl"):
        theirs = read(other, name)
        check(theirs is not None and theirs == read(reference, name), f"{name} equals the reference's")
    answers = read(other, "answers.jsonl") or b""
    ids = [json.loads(line)["id"] for line in answers.decode().splitlines() if line.strip()]
    check(len(ids) == len(set(ids)) == a["records"], f"every record answered exactly once ({len(ids)} lines)")
    adapter = os.path.join("adapter", "adapter_model.safetensors")
    if read(other, adapter) is None:
        check(False, f"{other}/{adapter} present")
    else:
        x, y = tensors(os.path.join(reference, adapter)), tensors(os.path.join(other, adapter))
        worst = max((max(abs(p - q) for p, q in zip(x[k], y[k])) for k in x if k in y), default=0.0)
        check(x.keys() == y.keys() and worst <= 1e-5, f"adapter within 1e-5 of the reference's (max diff {worst:.2e})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
