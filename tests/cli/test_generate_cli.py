"""slearn_dist generate: ids in, ids out against the transformers goldens; text prompts; clear errors."""
import json
import os

from clitest import FIXTURES, check, finish, json_lines, run

for name in ["qwen2-gqa-tied", "qwen2-untied-theta1e6", "llama-bf16"]:
    golden = json.load(open(os.path.join(FIXTURES, "golden", name, "golden.json")))
    args = ["generate", "--model", os.path.join(FIXTURES, "models", name), "--max-new-tokens", "32",
            "--ignore-eos", "--batch-size", "2", "--quiet"]
    for prompt in golden["prompts"]:
        args += ["--prompt-ids", ",".join(map(str, prompt))]
    code, out, err = run(args)
    check(code == 0, f"{name}: generate exits 0 (stderr: {err.strip()})")
    lines = json_lines(out)
    check(len(lines) == len(golden["prompts"]), f"{name}: one line per prompt")
    for i, (line, want) in enumerate(zip(lines, golden["greedy"])):
        check(line["ids"] == want, f"{name}: prompt {i} greedy ids equal transformers'")
        check("text" in line, f"{name}: text present when the model has a tokenizer")

# Text prompts with the chat format stop at an end token or the limit, and report statistics on stderr.
model = os.path.join(FIXTURES, "models", "qwen2-gqa-tied")
code, out, err = run(["generate", "--model", model, "--prompt", "What is anemia?", "--prompt", "高血压",
                      "--chat", "--max-new-tokens", "8", "--temperature", "0.8", "--seed", "3"])
check(code == 0, f"chat generation exits 0 ({err.strip()})")
lines = json_lines(out)
check(len(lines) == 2 and all(1 <= len(l["ids"]) <= 8 and isinstance(l["text"], str) for l in lines),
      "chat generation gives two results of 1..8 tokens")
check("generated tok/s" in err, "statistics on stderr")
code2, out2, _ = run(["generate", "--model", model, "--prompt", "What is anemia?", "--prompt", "高血压",
                      "--chat", "--max-new-tokens", "8", "--temperature", "0.8", "--seed", "3", "--batch-size", "1"])
check(out2 == out, "the same seed gives the same text, whatever the batch size")
code3, out3, _ = run(["generate", "--model", model, "--prompt", "What is anemia?", "--prompt", "高血压",
                      "--chat", "--max-new-tokens", "8", "--temperature", "0.8", "--seed", "3", "--batch-size", "auto"])
check(code3 == 0 and out3 == out, "--batch-size auto gives the same text")
code4, _, err4 = run(["generate", "--model", model, "--prompt", "hi", "--batch-size", "some"])
check(code4 != 0 and "--batch-size must be auto or a whole number >= 1" in err4, "a bad --batch-size is refused")

# Prompts from a JSONL file.
prompts_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"slearn-prompts-{os.getpid()}.jsonl")
with open(prompts_file, "w") as f:
    f.write('{"prompt": "hello"}\n{"ids": [5, 6, 7]}\n')
code, out, err = run(["generate", "--model", model, "--prompts", prompts_file, "--max-new-tokens", "4", "--quiet"])
check(code == 0 and len(json_lines(out)) == 2, f"--prompts reads prompt and ids records ({err.strip()})")
with open(prompts_file, "w") as f:
    f.write('{"prompt": "hello"}\n{"prompt": \n')
code, out, err = run(["generate", "--model", model, "--prompts", prompts_file])
check(code == 2 and f"{prompts_file}:2" in err, f"a bad prompts line names file and line ({err.strip()})")
os.remove(prompts_file)

# Errors: one line, exit code 2, naming what is wrong.
code, out, err = run(["generate", "--model", "/nonexistent/model", "--prompt-ids", "1,2"])
check(code == 2 and "config.json" in err and len(err.strip().splitlines()) == 1,
      f"missing model directory is one clear line ({err.strip()})")
code, out, err = run(["generate", "--model", model, "--prompt-ids", "1,x,3"])
check(code == 2 and "--prompt-ids" in err, f"bad --prompt-ids is named ({err.strip()})")
long_ids = ",".join(["5"] * 300)
code, out, err = run(["generate", "--model", model, "--prompt-ids", long_ids, "--max-new-tokens", "4"])
check(code == 2 and "context" in err, f"a prompt past the context is an error by default ({err.strip()})")
code, out, err = run(["generate", "--model", model, "--prompt-ids", long_ids, "--max-new-tokens", "4",
                      "--long-prompt", "truncate-left"])
check(code == 0 and len(json_lines(out)[0]["ids"]) == 4 and "cut" in err,
      f"truncate-left keeps the end of the prompt and says so ({err.strip()})")
code, out, err = run(["generate", "--model", model, "--prompt-ids", "1", "--backend", "tpu"])
check(code == 2 and "backend" in err, "an unknown backend is refused")
finish()
