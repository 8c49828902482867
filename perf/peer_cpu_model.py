#!/usr/bin/env python3
"""PyTorch peer for the CPU inference benchmark: transformers Qwen2 at the Qwen2.5-0.5B shape, fp32.

    /opt/slearn-ref/bin/python perf/peer_cpu_model.py [--threads T] [--layers 24] [--batch 1]
        [--prompt-len 128] [--new-tokens 32] [--repeat 3]

The model is randomly initialised (seeded; no weights are downloaded): hidden 896, intermediate 4864,
24 layers, 14 heads, 2 KV heads, vocab 151936, tied embeddings, rope_theta 1e6, sdpa attention.

(a) prefill: forward over a [batch, prompt_len] block of random ids, building the KV cache and
    computing logits for the last position only (as generation does); one warm-up, best of --repeat.
    prefill_tok_s = batch * prompt_len / seconds.
(b) decode: after a prefill, greedy decoding of exactly --new-tokens tokens per sequence with the KV
    cache (own loop over past_key_values, no EOS stopping); only the decode steps are timed, best of
    --decode-repeat. decode_tok_s = batch * new_tokens / seconds.

Prints one JSON line:
    {"impl":"transformers-cpu","torch":...,"transformers":...,"threads":T,"batch":B,"prompt_len":P,
     "new_tokens":G,"prefill_tok_s":...,"decode_tok_s":...,"layers":L,"prefill_s":...,"decode_s":...}
"""
from __future__ import annotations

import argparse
import json
import os
import time


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=default_threads(), help="torch intra-op threads (default: all cores)")
    ap.add_argument("--layers", type=int, default=24, help="number of decoder layers (24 = Qwen2.5-0.5B)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="timed prefill passes (best is reported)")
    ap.add_argument("--decode-repeat", type=int, default=1, help="timed decode passes (best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=args.layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        hidden_act="silu",
        initializer_range=0.02,
    )
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    assert model.config._attn_implementation == "sdpa"

    B, P, G = args.batch, args.prompt_len, args.new_tokens
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, config.vocab_size, (B, P), generator=gen)

    def prefill():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return out.past_key_values, out.logits[:, -1, :]

    with torch.inference_mode():
        prefill()  # warm-up
        best_prefill = float("inf")
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            prefill()
            best_prefill = min(best_prefill, time.perf_counter() - t0)

        best_decode = float("inf")
        for _ in range(max(1, args.decode_repeat)):
            pkv, last = prefill()
            t0 = time.perf_counter()
            for _ in range(G):
                nxt = torch.argmax(last, dim=-1, keepdim=True)  # [B, 1]
                out = model(input_ids=nxt, past_key_values=pkv, use_cache=True)
                pkv, last = out.past_key_values, out.logits[:, -1, :]
            best_decode = min(best_decode, time.perf_counter() - t0)

    print(json.dumps({
        "impl": "transformers-cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "batch": B,
        "prompt_len": P,
        "new_tokens": G,
        "prefill_tok_s": round(B * P / best_prefill, 2),
        "decode_tok_s": round(B * G / best_decode, 2),
        "layers": args.layers,
        "prefill_s": round(best_prefill, 4),
        "decode_s": round(best_decode, 4),
    }))


if __name__ == "__main__":
    main()
