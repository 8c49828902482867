"""slearn_dist train / merge / generate --adapter on the tiny fixture model, and train's clear errors (with run's
--tensor-parallel, which train shares)."""
import json
import os
import shutil
import tempfile

from clitest import FIXTURES, ROOT, check, finish, json_lines, run

work = tempfile.mkdtemp(prefix="slearn-train-cli-")
run_dir = os.path.join(work, "run")
config = os.path.join(ROOT, "configs", "train-tiny.yaml")

code, out, err = run(["train", "--config", config, "--set", f"run_dir={run_dir}", "--set", "train.epochs=1"])
check(code == 0, f"train exits 0 ({err.strip()[-300:]})")
check("slearn_dist train: step" in err and "finished at step 4/4" in err, "periodic log lines and a summary off a terminal")
metrics = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
check([m["step"] for m in metrics] == [1, 2, 3, 4], "metrics.jsonl has one line per step")
check(all(k in metrics[0] for k in ["loss", "learning_rate", "grad_norm", "tokens_per_second", "elapsed"]),
      "metrics lines carry loss, learning rate, gradient norm, tokens/s, elapsed")
adapter = os.path.join(run_dir, "adapter")
check(os.path.exists(os.path.join(adapter, "adapter_config.json")), "the adapter is written in PEFT layout")

# Running the finished run again does nothing twice.
code, out, err = run(["train", "--config", config, "--set", f"run_dir={run_dir}", "--set", "train.epochs=1"])
check(code == 0 and "resumed from 4" in err, f"a finished run resumes at its end ({err.strip()[-200:]})")
check(len(open(os.path.join(run_dir, "metrics.jsonl")).readlines()) == 4, "no metrics line twice")

model = os.path.join(FIXTURES, "models", "qwen2-gqa-tied")
base = run(["generate", "--model", model, "--prompt-ids", "5,6,7,8", "--max-new-tokens", "8", "--ignore-eos", "--quiet"])
tuned = run(["generate", "--model", model, "--adapter", adapter, "--prompt-ids", "5,6,7,8", "--max-new-tokens", "8",
             "--ignore-eos", "--quiet"])
check(base[0] == 0 and tuned[0] == 0, f"generate with and without --adapter ({tuned[2].strip()})")

merged = os.path.join(work, "merged")
code, out, err = run(["merge", "--model", model, "--adapter", adapter, "--out", merged])
check(code == 0 and os.path.exists(os.path.join(merged, "model.safetensors")), f"merge writes a checkpoint ({err.strip()})")
via_merged = run(["generate", "--model", merged, "--prompt-ids", "5,6,7,8", "--max-new-tokens", "8", "--ignore-eos",
                  "--quiet"])
check(via_merged[1] == tuned[1], "the merged model generates what base + adapter generates")

# Errors: one line, exit code 2, naming the key or file.
bad = os.path.join(work, "bad.yaml")
with open(bad, "w") as f:
    f.write(open(config).read() + "\nlora_rank: 4\n")
code, out, err = run(["train", "--config", bad])
check(code == 2 and "lora_rank" in err and len(err.strip().splitlines()) == 1, f"an unknown key is named ({err.strip()})")
code, out, err = run(["train", "--config", config, "--set", "lora.r=zero"])
check(code == 2 and "lora.r" in err, f"a wrong type is named ({err.strip()})")
# --tensor-parallel T is parallel.tensor=T after the other --set: a bad T is the configuration's error, for train
# and run alike (run stops while reading its configuration, before any model or run directory is touched).
for command, command_config in (("train", config), ("run", os.path.join(ROOT, "configs", "demo.yaml"))):
    code, out, err = run([command, "--help"])
    check(code == 0 and "--tensor-parallel T" in out and "parallel.tensor=T" in out,
          f"{command} --help lists --tensor-parallel ({out.strip()[-300:]})")
    code, out, err = run([command, "--config", command_config, "--set", "parallel.tensor=2", "--tensor-parallel", "0",
                          "--set", f"run_dir={os.path.join(work, 'tp-' + command)}"])
    lines = err.strip().splitlines()
    check(code == 2 and len(lines) == 1 and '"parallel.tensor"' in lines[0] and "got 0" in lines[0],
          f"{command} --tensor-parallel 0 is refused naming parallel.tensor, over an earlier --set ({err.strip()})")
    check(not os.path.exists(os.path.join(work, "tp-" + command)), f"{command} --tensor-parallel 0 makes no run_dir")
code, out, err = run(["train", "--config", os.path.join(work, "missing.yaml")])
check(code == 2 and "missing.yaml" in err, f"a missing config file is named ({err.strip()})")
code, out, err = run(["train", "--config", config, "--set", f"run_dir={run_dir}", "--set", "train.epochs=1",
                      "--set", "lora.r=4"])
check(code == 2 and "config" in err, f"a checkpoint of another configuration is refused ({err.strip()})")
shutil.rmtree(work)
finish()
