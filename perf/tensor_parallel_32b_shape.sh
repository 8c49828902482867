#!/usr/bin/env bash
# configs/qwen1.5-32b-chat.yaml as shipped (parallel.tensor 4, r 64 on all seven projections, the paper's
# hyper-parameters) run end to end under mpirun -np 4 on a random checkpoint of Qwen1.5-32B's exact layer shape
# (hidden 5120, 40 heads over 8 kv heads, intermediate 27392, vocabulary 152064, untied head) cut to LAYERS
# layers (default 1), so that it fits a 24 GB CPU machine: each rank reads only its quarter of every layer and
# of the head. Only sizes are overridden (the record count, tokens generated, max_length, the batch), never
# the structure. First bench_tensor_parallel measures what each of the 4 ranks holds at that shape (fp32).
# The model is random: its answers and its grading are noise; what this shows is that the configuration runs
# at the shape it is for, sharded, every stage, and what a rank holds.
#
#   perf/tensor_parallel_32b_shape.sh [BIN_DIR [LAYERS [WORK_DIR]]]   (defaults: build/bin, 1, a new temp dir)
#
# Writes only inside WORK_DIR, which must not exist yet (or a fresh mktemp directory, removed at the end).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/build/bin}"
layers="${2:-1}"
if [ -n "${3:-}" ]; then
  work="$3"
  mkdir "$work"  # refuses an existing directory: nothing of the user's is touched
  keep=1
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/slearn-tp-32b-XXXXXX")"
  keep=0
fi
cleanup() { [ "$keep" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT

echo "# machine: $("$bin/slearn_dist" --version | sed -n 2p)"
echo "# $(date -u +%FT%TZ), layers $layers, work dir $work"
mpirun --oversubscribe -np 4 "$bin/bench_tensor_parallel" --shape qwen1.5-32b --layers "$layers" --dir "$work" --keep |
  tee "$work/bench.txt"
model="$(sed -n 's/^# writing a random .* to \(.*\)$/\1/p' "$work/bench.txt")"
[ -d "$model" ] || { echo "tensor_parallel_32b_shape.sh: no checkpoint written" >&2; exit 1; }
cp "$root/../shared/data/qwen-tokenizer/tokenizer.json" "$root/../shared/data/qwen-tokenizer/tokenizer_config.json" "$model/"

# 8 records to answer and train on, 4 held out (MedQuAD repeats some ids: each record gets its own here).
python3 - "$root/../shared/data/datasets/medquad-en.jsonl" "$work" <<'PY'
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
for name, part in (("data", lines[:8]), ("eval", lines[-4:])):
    with open(f"{sys.argv[2]}/{name}.jsonl", "w", encoding="utf-8") as out:
        for i, line in enumerate(part):
            record = json.loads(line)
            out.write(json.dumps({"id": f"{name}-{i}", "question": record["question"], "answer": record["answer"]},
                                 ensure_ascii=False) + "\n")
PY
start=$(date +%s)
mpirun --oversubscribe -np 4 "$bin/slearn_dist" run --config "$root/configs/qwen1.5-32b-chat.yaml" \
  --set model="$model" --set run_dir="$work/run" --set data.path="$work/data.jsonl" \
  --set eval.data.path="$work/eval.jsonl" --set answer.max_new_tokens=4 --set judge.max_new_tokens=8 \
  --set max_length=96 --set train.epochs=1 --set train.global_batch_size=4 --set checkpoint.every_steps=1
echo "# run: $(( $(date +%s) - start )) s"
python3 - "$work/run/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("# summary.json:", json.dumps({k: s.get(k) for k in ("tensor_parallel", "data_parallel", "records", "incorrect",
                                                            "train_steps", "accuracy_before", "accuracy_after")}))
PY
ls -la "$work/run/adapter"
