#!/usr/bin/env bash
# The demo's answer stage beside transformers (issue 14): the 320 questions of demo/data/train.jsonl answered by
# demo/model, greedy, 8 new tokens, batches of 32, chat-formatted with the demo's system prompt, on the same
# threads: `slearn_dist generate` (what the answer stage calls, without the run directory's bookkeeping) and
# perf/peer_demo_answers.py (transformers generate), alternating for ROUNDS rounds; the answers must be the same
# text. Then one `slearn_dist run` of configs/demo.yaml on one rank, for the answer stage's own wall time.
#
#   perf/demo_answer_stage.sh [PYTHON [ROUNDS [THREADS [BIN_DIR]]]]   (defaults: /opt/slearn-ref/bin/python, 3, nproc, build/bin)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-/opt/slearn-ref/bin/python}"
rounds="${2:-3}"
threads="${3:-$(nproc)}"
bin="${4:-$root/build/bin}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
system="You are a concise pharmacology assistant."
cd "$root"
echo "# machine: $("$bin/slearn_dist" --version | sed -n 2p)"
echo "# $(date -u +%F), threads $threads, $rounds rounds"
"$python" -c "
import json, sys
with open('$tmp/prompts.jsonl', 'w', encoding='utf-8') as out:
    for line in open('demo/data/train.jsonl', encoding='utf-8'):
        out.write(json.dumps({'prompt': json.loads(line)['question']}, ensure_ascii=False) + '\n')"
for round in $(seq 1 "$rounds"); do
  "$bin/slearn_dist" generate --model demo/model --prompts "$tmp/prompts.jsonl" --chat --system "$system" \
    --max-new-tokens 8 --batch-size 32 --threads "$threads" >"$tmp/slearn.jsonl" 2>"$tmp/slearn.err"
  sed -n 's/.* in \([0-9.e-]*\) s (\([0-9.]*\) generated tok\/s).*/{"engine": "slearn", "seconds": \1, "tok_s": \2}/p' \
    "$tmp/slearn.err" >>"$tmp/results.jsonl"
  "$python" perf/peer_demo_answers.py --model demo/model --data demo/data/train.jsonl --system "$system" \
    --max-new-tokens 8 --batch 32 --threads "$threads" --out "$tmp/peer.jsonl" 2>/dev/null | tail -1 |
    "$python" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'engine':'transformers','seconds':d['seconds'],'tok_s':d['generated_tok_s']}))" >>"$tmp/results.jsonl"
done
"$python" - "$tmp" <<'PY'
import json, statistics, sys
tmp = sys.argv[1]
rows = [json.loads(l) for l in open(f"{tmp}/results.jsonl")]
ours = [json.loads(l)["text"].strip() for l in open(f"{tmp}/slearn.jsonl")]
peer = [json.loads(l)["answer"].strip() for l in open(f"{tmp}/peer.jsonl")]
same = sum(a == b for a, b in zip(ours, peer))
med = {e: statistics.median(r["tok_s"] for r in rows if r["engine"] == e) for e in ("slearn", "transformers")}
secs = {e: statistics.median(r["seconds"] for r in rows if r["engine"] == e) for e in ("slearn", "transformers")}
for e in med:
    print(f"{e:13s} {med[e]:9.1f} generated tok/s  {secs[e]:.3f} s for {len(ours)} questions (median)")
print(f"ratio slearn / transformers: {med['slearn'] / med['transformers']:.2f}x; same answers: {same} of {len(ours)}")
PY
OMPI_MCA_btl="${OMPI_MCA_btl:-self,vader}" "$bin/slearn_dist" run --config configs/demo.yaml --set "run_dir=$tmp/run" \
  --set "threads=$threads" --quiet >/dev/null
"$python" -c "import json; s=json.load(open('$tmp/run/summary.json')); print('pipeline answer stage (one rank, 320 records):', round(s['stages']['answer']['wall_seconds'], 3), 's')"
