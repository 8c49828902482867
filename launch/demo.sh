#!/usr/bin/env bash
# Sets up (packages, build) and runs the main job on the embedded default. For now that is batched
# generation with the shipped tiny model (random weights: the text is noise, the machinery is real);
# once the pipeline lands it becomes the whole self-learning run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/setup.sh"
cd "$SLEARN_ROOT"
set -x
build/bin/slearn_dist generate --model tests/fixtures/models/qwen2-gqa-tied \
  --prompts configs/demo-prompts.jsonl --chat --system "You are a helpful medical assistant." \
  --max-new-tokens 48 --batch-size 4 --temperature 0.7 --top-p 0.9 --seed 7
