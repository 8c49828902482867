#!/usr/bin/env bash
# The CPU engine beside llama.cpp and transformers, in the same run on the same machine (issue 14): the same
# random Qwen2.5-0.5B-shaped checkpoint (perf/bench_cpu_model writes it, bf16) is converted to GGUF F32 and BF16
# by llama.cpp's own converter, then rounds alternate between slearn (bench_cpu_model with cpu_weights f32 and
# bf16), llama.cpp (llama-bench)
# and transformers (perf/peer_cpu_model.py): prefill of 128 tokens and decode at batch 1, every engine on the
# same thread count. Nothing of llama.cpp is here: point LLAMA_CPP_DIR at a checkout you built yourself
# (build/bin/llama-bench, and convert_hf_to_gguf.py with its gguf-py).
#
#   perf/cpu_vs_llama_cpp.sh LLAMA_CPP_DIR [PYTHON] [ROUNDS] [THREADS] [BIN_DIR] [BATCHES]
#
# BATCHES (e.g. 32,64): after the batch-1 rounds (ROUNDS 0: none), batched generation once per engine for each B: B prompts of
# 100 tokens, 128 new each, all B sequences in one batch from start to end (bench_cpu_model --batch B,
# llama-batched-bench -npp 100 -ntg 128 -npl B, perf/peer_cpu_model.py --batch B); one run each, not alternated.
#
# PYTHON needs torch, transformers and numpy (the converter's and the peer's imports); default
# /opt/slearn-ref/bin/python. Prints one line per engine and round, then the medians and the ratios.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
llama="${1:?usage: perf/cpu_vs_llama_cpp.sh LLAMA_CPP_DIR [PYTHON] [ROUNDS] [THREADS] [BIN_DIR] [BATCHES]}"
python="${2:-/opt/slearn-ref/bin/python}"
rounds="${3:-5}"
threads="${4:-$(nproc)}"
bin="${5:-$root/build/bin}"  # slearn's binaries (default: launch/setup.sh's build)
batches="${6:-}"
[ -x "$llama/build/bin/llama-bench" ] || { echo "no $llama/build/bin/llama-bench: build llama.cpp first" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "# machine: $("$bin/slearn_dist" --version | sed -n 2p)"
echo "# llama.cpp: $(git -C "$llama" log -1 --format='%h %cd' --date=short 2>/dev/null || echo unknown), threads $threads, $(date -u +%F)"

# The checkpoint: bench_cpu_model's random bf16 weights, with what the converter needs beside them (the
# architecture's name and the real Qwen tokenizer, whose vocabulary the random model's covers).
"$bin/bench_cpu_model" --batch 1 --prompt-len 8 --new-tokens 1 --repeat 1 --threads "$threads" --workdir "$tmp/model" >/dev/null
model="$tmp/model/layers-24"
cp "$root/../shared/data/qwen-tokenizer/tokenizer.json" "$root/../shared/data/qwen-tokenizer/tokenizer_config.json" "$model/"
"$python" - "$model/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["architectures"] = ["Qwen2ForCausalLM"]
json.dump(config, open(path, "w"), indent=2)
PY
for type in f32 bf16; do
  PYTHONPATH="$llama/gguf-py" "$python" "$llama/convert_hf_to_gguf.py" "$model" --outtype "$type" \
    --outfile "$tmp/model-$type.gguf" >"$tmp/convert-$type.log" 2>&1 || { tail -20 "$tmp/convert-$type.log" >&2; exit 1; }
done

results="$tmp/results.jsonl"
for round in $(seq 1 "$rounds"); do
  for weights in f32 bf16; do
    "$bin/bench_cpu_model" --batch 1 --prompt-len 128 --new-tokens 32 --threads "$threads" --cpu-weights "$weights" \
      --workdir "$tmp/model" |
      "$python" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'engine':'slearn $weights','prefill':d['prefill_tok_s'],'decode':d['decode_tok_s']}))" >>"$results"
  done
  for type in f32 bf16; do
    "$llama/build/bin/llama-bench" -m "$tmp/model-$type.gguf" -p 128 -n 32 -t "$threads" -r 3 -o json 2>/dev/null |
      "$python" -c "
import json, sys
rows = json.load(sys.stdin)
pp = [r['avg_ts'] for r in rows if r['n_prompt'] > 0 and r['n_gen'] == 0]
tg = [r['avg_ts'] for r in rows if r['n_gen'] > 0 and r['n_prompt'] == 0]
print(json.dumps({'engine': 'llama.cpp $type', 'prefill': pp[0], 'decode': tg[0]}))" >>"$results"
  done
  "$python" "$root/perf/peer_cpu_model.py" --threads "$threads" --batch 1 --prompt-len 128 --new-tokens 32 2>/dev/null | tail -1 |
    "$python" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'engine':'transformers f32','prefill':d['prefill_tok_s'],'decode':d['decode_tok_s']}))" >>"$results"
  echo "round $round done" >&2
done

[ "$rounds" -eq 0 ] || "$python" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
engines = sorted({r["engine"] for r in rows}, key=lambda e: (not e.startswith("slearn"), e))
median = {e: {k: statistics.median(r[k] for r in rows if r["engine"] == e) for k in ("prefill", "decode")}
          for e in engines}
print(f"{'engine':20s} {'prefill tok/s':>14s} {'decode tok/s':>13s}   medians of {len(rows) // len(engines)} rounds")
for e in engines:
    print(f"{e:20s} {median[e]['prefill']:14.1f} {median[e]['decode']:13.2f}")
for ours in ("slearn f32", "slearn bf16"):
    for e in engines:
        if e.startswith("slearn"):
            continue
        print(f"{ours} / {e}: prefill {median[ours]['prefill'] / median[e]['prefill']:.2f}x, "
              f"decode {median[ours]['decode'] / median[e]['decode']:.2f}x")
PY

[ -n "$batches" ] || exit 0
batched="$tmp/batched.jsonl"
for b in ${batches//,/ }; do
  for weights in f32 bf16; do
    "$bin/bench_cpu_model" --batch "$b" --prompt-len 100 --new-tokens 128 --repeat 1 --threads "$threads" \
      --cpu-weights "$weights" --workdir "$tmp/model" |
      "$python" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'batch':$b,'engine':'slearn $weights','prefill':d['prefill_tok_s'],'decode':d['decode_tok_s']}))" >>"$batched"
  done
  for type in f32 bf16; do
    "$llama/build/bin/llama-batched-bench" -m "$tmp/model-$type.gguf" -c $((b * 228 + 256)) -b 2048 -ub 512 -npp 100 \
      -ntg 128 -npl "$b" -t "$threads" --output-format jsonl 2>&1 | grep '^{' | tail -1 |
      "$python" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'batch':$b,'engine':'llama.cpp $type','prefill':d['speed_pp'],'decode':d['speed_tg']}))" >>"$batched"
  done
  "$python" "$root/perf/peer_cpu_model.py" --threads "$threads" --batch "$b" --prompt-len 100 --new-tokens 128 \
    --repeat 1 2>/dev/null | tail -1 |
    "$python" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'batch':$b,'engine':'transformers f32','prefill':d['prefill_tok_s'],'decode':d['decode_tok_s']}))" >>"$batched"
  echo "batch $b done" >&2
done
"$python" - "$batched" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for b in sorted({r["batch"] for r in rows}):
    print(f"\nbatch {b} x 100 prompt tokens, 128 new (one run each)")
    print(f"{'engine':20s} {'prefill tok/s':>14s} {'decode tok/s':>13s}")
    mine = {r["engine"]: r for r in rows if r["batch"] == b}
    for e, r in mine.items():
        print(f"{e:20s} {r['prefill']:14.1f} {r['decode']:13.2f}")
    for ours in ("slearn f32", "slearn bf16"):
        for e in mine:
            if not e.startswith("slearn") and ours in mine:
                print(f"{ours} / {e}: prefill {mine[ours]['prefill'] / mine[e]['prefill']:.2f}x, "
                      f"decode {mine[ours]['decode'] / mine[e]['decode']:.2f}x")
PY
