"""slearn_dist tokenize: the real Qwen tokenizer's reference cases through the command line, both ways."""
import json
import os
import sys

from clitest import FIXTURES, SHARED_DATA, check, finish, json_lines, run

qwen = os.path.join(SHARED_DATA, "qwen-tokenizer")
if not os.path.isdir(qwen):
    print("SKIPPED: shared data not found at", qwen)
    sys.exit(0)

cases = [json.loads(line) for line in open(os.path.join(qwen, "encode-cases.jsonl"), encoding="utf-8")]
stdin = "".join(json.dumps({"text": c["text"]}, ensure_ascii=False) + "\n" for c in cases)
code, out, err = run(["tokenize", "--tokenizer", qwen], stdin)
check(code == 0, f"tokenize exits 0 ({err.strip()})")
got = json_lines(out)
check(len(got) == len(cases), "one output line per input line")
for case, line in zip(cases, got):
    check(line["ids"] == case["ids"], f"encode {case['text'][:40]!r}")

stdin = "".join(json.dumps({"ids": c["ids"]}) + "\n" for c in cases)
code, out, err = run(["tokenize", "--tokenizer", qwen, "--decode"], stdin)
check(code == 0, f"decode exits 0 ({err.strip()})")
for case, line in zip(cases, json_lines(out)):
    if case["decoded_equals_text"]:
        check(line["text"] == case["text"], f"decode back to {case['text'][:40]!r}")

# --add-special-tokens applies the tokenizer's post-processor (LLaMA-2 style adds <s>).
spbpe = os.path.join(FIXTURES, "tokenizers", "spbpe-tiny")
code, out, _ = run(["tokenize", "--tokenizer", spbpe], '{"text": "hello"}\n')
plain = json_lines(out)[0]["ids"]
code, out, _ = run(["tokenize", "--tokenizer", spbpe, "--add-special-tokens"], '{"text": "hello"}\n')
check(json_lines(out)[0]["ids"] == [1] + plain, "--add-special-tokens prepends <s> for the LLaMA-2 style tokenizer")

code, out, err = run(["tokenize", "--tokenizer", qwen], '{"text": "ok"}\n{"txt": 1}\n')
check(code == 2 and "<stdin>:2" in err, f"a bad input line is named ({err.strip()})")
code, out, err = run(["tokenize", "--tokenizer", "/nonexistent"], "")
check(code == 2 and "tokenizer.json" in err, f"a missing tokenizer is named ({err.strip()})")
finish()
