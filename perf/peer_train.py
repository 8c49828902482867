#!/usr/bin/env python3
"""PyTorch + PEFT peer for the CPU LoRA training benchmark (perf/bench_train.cpp), fp32 on CPU.

    /opt/slearn-ref/bin/python perf/peer_train.py [--threads T] [--batch 4] [--seq-len 256] [--rank 16]

A randomly initialised Qwen2 (hidden 512, intermediate 1408, 4 layers, 8 heads, 2 KV heads, vocab 32000, tied),
LoRA on all seven projections (alpha = 2 * rank, dropout 0), AdamW. One step = forward with labels on every
token, backward, clip_grad_norm_(1.0), optimizer step. One warm-up step, then the best of --steps.
Prints one JSON line: {"impl":"transformers+peft-cpu",...,"tokens_per_s":...}.
"""
import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=args.layers,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_theta=1e6, max_position_embeddings=4096, use_sliding_window=False)
    model = Qwen2ForCausalLM(config).float()
    model.config._attn_implementation = "sdpa"
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, 32000, (args.batch, args.seq_len))
    best = float("inf")
    for s in range(args.steps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if s > 0:
            best = min(best, dt)
    import peft
    import transformers
    print(json.dumps({"impl": "transformers+peft-cpu", "torch": torch.__version__,
                      "transformers": transformers.__version__, "peft": peft.__version__,
                      "threads": args.threads, "batch": args.batch, "seq_len": args.seq_len, "rank": args.rank,
                      "step_s": best, "tokens_per_s": args.batch * args.seq_len / best}))


if __name__ == "__main__":
    main()
