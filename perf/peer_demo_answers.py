#!/usr/bin/env python3
"""Peer of the demo's answer stage: transformers answering the same questions with the same model, greedily.

    /opt/slearn-ref/bin/python perf/peer_demo_answers.py --model demo/model --data demo/data/train.jsonl \
        [--system TEXT] [--max-new-tokens 8] [--batch 32] [--threads T] [--out answers.jsonl]

Each question goes through the tokenizer's own chat template (apply_chat_template with the system prompt and the
generation prompt: the ChatML that slearn writes), batches of --batch are left-padded and answered with
model.generate (greedy, max_new_tokens, stopping at the model's EOS tokens, dynamic KV cache), fp32. Timed: the
generate calls only (tokenization and decoding outside). Prints one JSON line: prompts, prompt and generated
tokens, seconds, generated tok/s and prompts/s; --out writes {"id", "answer"} per record in input order.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--system", default="You are a concise pharmacology assistant.")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    records = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    texts = [tok.apply_chat_template([{"role": "system", "content": args.system},
                                      {"role": "user", "content": r["question"]}],
                                     tokenize=False, add_generation_prompt=True) for r in records]
    pad = tok.pad_token_id if tok.pad_token_id is not None else model.generation_config.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    answers, seconds, prompt_tokens, generated = [], 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(texts), args.batch):
            enc = tok(texts[start:start + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
            t0 = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
            seconds += time.perf_counter() - t0
            prompt_tokens += int(enc["attention_mask"].sum())
            eos = model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                kept = []
                for t in row:
                    if t in eos:
                        break
                    kept.append(t)
                generated += len(kept) + (1 if len(kept) < len(row) else 0)  # the EOS step counts, as in slearn
                answers.append(tok.decode(kept, skip_special_tokens=True))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for r, a in zip(records, answers):
                f.write(json.dumps({"id": r["id"], "answer": a}, ensure_ascii=False) + "\n")
    print(json.dumps({"impl": "transformers-cpu", "prompts": len(records), "prompt_tokens": prompt_tokens,
                      "generated_tokens": generated, "seconds": seconds, "generated_tok_s": generated / seconds,
                      "prompts_s": len(records) / seconds, "batch": args.batch, "threads": args.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
