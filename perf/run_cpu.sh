#!/usr/bin/env bash
# Runs the CPU benchmarks beside their Python peers in the same run on the same machine and prints the ratios.
# Needs the build (launch/setup.sh) and a Python with torch, transformers and tokenizers:
#   perf/run_cpu.sh [PYTHON]            (default: /opt/slearn-ref/bin/python, see docs/performance.md)
# Environment-free: every knob is an argument of the scripts below; edit this file to change the shapes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-/opt/slearn-ref/bin/python}"
bin="$root/build/bin"
data="$root/../shared/data"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%F)"
echo "# tokenizer: single thread, real Qwen tokenizer, one encode call per text"
for set in medquad-en huatuo-med-zh pubmedqa-labelled-en; do
  ours=$("$bin/bench_tokenizer" --tokenizer "$data/qwen-tokenizer" --texts "$data/datasets/$set.jsonl" --ids-out "$tmp/ids.bin")
  peer=$("$python" "$root/perf/peer_tokenizer.py" --tokenizer "$data/qwen-tokenizer" --texts "$data/datasets/$set.jsonl")
  "$python" - "$set" "$ours" "$peer" "$(sha256sum "$tmp/ids.bin" | cut -d' ' -f1)" <<'PY'
import json, sys
name, ours, peer, our_sha = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
same = "same ids" if our_sha == peer["ids_sha256"] else "IDS DIFFER"
print(f"{name:22s} best of 3: slearn {ours['mb_per_s']:6.2f} MB/s  hf-tokenizers {peer['mb_per_s']:6.2f} MB/s  "
      f"ratio {ours['mb_per_s'] / peer['mb_per_s']:.2f}x | first pass: slearn {ours['cold_mb_per_s']:6.2f}  "
      f"hf {peer['cold_mb_per_s']:6.2f}  ratio {ours['cold_mb_per_s'] / peer['cold_mb_per_s']:.2f}x  "
      f"({ours['tokens']} tokens, {same})")
PY
done

echo "# CPU model: Qwen2.5-0.5B shape, fp32, random weights, all cores"
for shape in "1 128 32" "8 128 32"; do
  read -r batch plen gen <<<"$shape"
  ours=$("$bin/bench_cpu_model" --batch "$batch" --prompt-len "$plen" --new-tokens "$gen" --workdir "$tmp/model")
  peer=$("$python" "$root/perf/peer_cpu_model.py" --batch "$batch" --prompt-len "$plen" --new-tokens "$gen")
  "$python" - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"batch {o['batch']} prompt {o['prompt_len']}: prefill slearn {o['prefill_tok_s']:7.1f} tok/s  "
      f"torch {p['prefill_tok_s']:7.1f} tok/s  ratio {o['prefill_tok_s'] / p['prefill_tok_s']:.2f}x | "
      f"decode slearn {o['decode_tok_s']:6.1f} tok/s  torch {p['decode_tok_s']:6.1f} tok/s  "
      f"ratio {o['decode_tok_s'] / p['decode_tok_s']:.2f}x  ({o['threads']} threads)")
PY
done

echo "# CPU LoRA training: Qwen2 hidden 512, 4 layers, vocab 32000, r 16 on all seven projections, fp32"
for shape in "4 256"; do
  read -r batch seq <<<"$shape"
  ours=$("$bin/bench_train" --batch "$batch" --seq-len "$seq" --workdir "$tmp/train")
  ours_ckpt=$("$bin/bench_train" --batch "$batch" --seq-len "$seq" --workdir "$tmp/train" --recompute)
  peer=$("$python" "$root/perf/peer_train.py" --batch "$batch" --seq-len "$seq")
  "$python" - "$ours" "$ours_ckpt" "$peer" <<'PY'
import json, sys
o, c, p = (json.loads(a) for a in sys.argv[1:4])
print(f"batch {o['batch']} x {o['seq_len']}: slearn {o['tokens_per_s']:7.1f} tok/s "
      f"({o['activation_bytes'] / 1e6:.0f} MB activations), with recomputation {c['tokens_per_s']:7.1f} tok/s "
      f"({c['activation_bytes'] / 1e6:.0f} MB), torch+peft {p['tokens_per_s']:7.1f} tok/s  "
      f"ratio {o['tokens_per_s'] / p['tokens_per_s']:.2f}x  ({o['threads']} threads)")
PY
done
