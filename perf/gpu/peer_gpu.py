#!/usr/bin/env python3
"""PyTorch peers of the GPU benchmarks (perf/gpu/bench_gpu_ops, bench_gpu_decode), run by perf/gpu/check.sh on
the same GPU in the same run. The same JSON-lines schema and the same "case" names as the C++ benches, so
perf/gpu/report.py pairs each line with its slearn twin.

    python3 perf/gpu/peer_gpu.py ops [--only copy,gemm,attention] [--copy-mib 2048]
        [--gemm-shapes 8192x8192x8192,7b] [--gemm-rows 1,64,256,4096] [--attention-seqs 512,2048,4096]
        [--heads 28 --kv-heads 4 --head-dim 128] [--warmup 3 --repeat 20]
    python3 perf/gpu/peer_gpu.py generate --runs qwen2.5-0.5b:1,qwen2.5-7b:1,qwen2.5-7b:64
        [--prompt-len 128] [--new-tokens 256] [--cache dynamic|static] [--copy-gbs X] [--repeat 1]

ops (the method of bench_gpu_ops):
  copy       dst.copy_(src) of --copy-mib MiB on the device; bytes read + written over the median time
  gemm       torch.matmul(x, W.t()), bf16, W rotating over enough copies to exceed the L2 (as the C++ bench)
  attention  F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True) with q [1, heads, seq, d]
             and k, v [1, kv_heads, seq, d] (expanded k, v where enable_gqa is refused); causal flop count
  Each the median of --repeat samples timed by CUDA events after --warmup calls.
generate (transformers generate, random weights, built on the GPU in bf16 with sdpa attention):
  each SHAPE:BATCH of --runs: BATCH random prompts of --prompt-len tokens, greedy, exactly --new-tokens new
  tokens (no EOS). out_tok_s = batch * new_tokens / seconds of the whole call. The decode phase: the time of a
  call with max_new_tokens=1 (prefill and first token) is taken off; batch 1 always measures it, batches above
  1 only with --decode-phase (it costs one more prefill). --cache static is transformers' static-cache mode,
  which compiles the decode step with torch.compile on its first call: that call is the untimed warm-up, and
  its time is reported as warmup_s.

--dry-run validates the arguments and prints the plan, importing nothing but the standard library (check.sh
--dry-run on a machine without a GPU or torch).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

# The shapes of slearn::reference_shape (src/model/reference_shapes.cpp), field for field.
SHAPES = {
    "qwen2.5-0.5b": dict(vocab=151936, hidden=896, inter=4864, layers=24, heads=14, kv_heads=2, head_dim=64,
                         tied=True),
    "qwen2.5-7b": dict(vocab=152064, hidden=3584, inter=18944, layers=28, heads=28, kv_heads=4, head_dim=128,
                       tied=False),
    "tiny": dict(vocab=1024, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, head_dim=16, tied=True),
}


# ---- the byte counts and case names of gpu_bench.hpp ----
def decode_weight_bytes(s: dict) -> float:
    h, i = s["hidden"], s["inter"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    per_layer = (q + 2 * kv) * h + (q + 2 * kv) + h * q + 3 * h * i + 2 * h
    return 2.0 * (s["layers"] * per_layer + h + s["vocab"] * h)


def kv_read_bytes(s: dict, context: float) -> float:
    return 4.0 * s["layers"] * s["kv_heads"] * s["head_dim"] * context


def decode_case(shape: str, batch: int, prompt_len: int, new_tokens: int) -> str:
    kind = "decode" if batch == 1 else "generate"
    return f"{kind} {shape} b={batch} in={prompt_len} out={new_tokens}"


def gemm_case(m: int, n: int, k: int) -> str:
    return f"gemm m={m} n={n} k={k}"


def attention_case(seq: int, heads: int, kv_heads: int, head_dim: int) -> str:
    return f"attention seq={seq} heads={heads}/{kv_heads} d={head_dim}"


def copy_case(nbytes: int) -> str:
    return f"copy {nbytes >> 20} MiB"


def causal_attention_flops(seq: int, heads: int, head_dim: int) -> float:
    return 4.0 * heads * head_dim * seq * (seq + 1) / 2.0


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: positive integers expected")
    return values


def gemm_shapes(spec: str, rows: list[int]) -> list[tuple[int, int, int, str]]:
    shapes = []
    for item in (v for v in spec.split(",") if v):
        if item == "7b":
            s = SHAPES["qwen2.5-7b"]
            h, q = s["hidden"], s["heads"] * s["head_dim"]
            kv, i = s["kv_heads"] * s["head_dim"], s["inter"]
            for m in rows:
                shapes += [(m, q + 2 * kv, h, "7b qkv_proj"), (m, h, q, "7b o_proj"),
                           (m, 2 * i, h, "7b gate_up_proj"), (m, h, i, "7b down_proj")]
            continue
        parts = item.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"peer_gpu.py: --gemm-shapes: {item!r} is not MxNxK (positive) or 7b")
        m, n, k = (int(p) for p in parts)
        shapes.append((m, n, k, "square" if m == n == k else "given"))
    return shapes


def parse_runs(text: str) -> list[tuple[str, int]]:
    runs = []
    for item in (v for v in text.split(",") if v):
        shape, _, batch = item.partition(":")
        if shape not in SHAPES or not batch.isdigit() or int(batch) <= 0:
            raise argparse.ArgumentTypeError(f"{item!r} is not SHAPE:BATCH with SHAPE one of {', '.join(SHAPES)}")
        runs.append((shape, int(batch)))
    if not runs:
        raise argparse.ArgumentTypeError("no runs given")
    return runs


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


# ---- ops ----
class EventTimer:
    """Milliseconds of single calls, timed by CUDA events on the current stream."""

    def __init__(self, torch):
        self.torch = torch
        self.start = torch.cuda.Event(enable_timing=True)
        self.stop = torch.cuda.Event(enable_timing=True)

    def samples(self, op, warmup: int, repeat: int) -> list[float]:
        for _ in range(warmup):
            op()
        out = []
        for _ in range(repeat):
            self.start.record()
            op()
            self.stop.record()
            self.stop.synchronize()
            out.append(self.start.elapsed_time(self.stop))
        return out


def run_ops(args, torch) -> None:
    import torch.nn.functional as F

    device = torch.cuda.get_device_name()
    common = dict(impl="torch", device=device, torch=torch.__version__, warmup=args.warmup, repeat=args.repeat)
    timer = EventTimer(torch)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        return (torch.rand(*shape, device="cuda", generator=gen, dtype=torch.float32) * 2 - 1).to(torch.bfloat16)

    if "copy" in args.only:
        nbytes = args.copy_mib << 20
        src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        torch.cuda.synchronize()
        t = statistics.median(timer.samples(lambda: dst.copy_(src), args.warmup, args.repeat)) / 1e3
        emit(dict(bench="copy", case=copy_case(nbytes), bytes=nbytes, ms=t * 1e3, gb_s=2 * nbytes / t / 1e9,
                  note="bytes read + bytes written", **common))
        del src, dst
    if "gemm" in args.only:
        for m, n, k, what in gemm_shapes(args.gemm_shapes, args.gemm_rows):
            copies = int(min(16, max(1, math.ceil(args.l2_bytes / (2.0 * n * k)))))
            a = rand(m, k)
            weights = [rand(n, k) for _ in range(copies)]
            turn = [0]

            def op():
                w = weights[turn[0] % copies]
                turn[0] += 1
                return torch.matmul(a, w.t())

            torch.cuda.synchronize()
            t = statistics.median(timer.samples(op, args.warmup, args.repeat)) / 1e3
            emit(dict(bench="gemm", case=gemm_case(m, n, k), what=what, m=m, n=n, k=k, weight_copies=copies,
                      ms=t * 1e3, tflop_s=2.0 * m * n * k / t / 1e12, gb_s=2.0 * (m * k + n * k + m * n) / t / 1e9,
                      **common))
            del a, weights
    if "attention" in args.only:
        h, kvh, d = args.heads, args.kv_heads, args.head_dim
        for seq in args.attention_seqs:
            q, k, v = rand(1, h, seq, d), rand(1, kvh, seq, d), rand(1, kvh, seq, d)
            mode = "enable_gqa"
            try:
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                op = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
            except (TypeError, RuntimeError):
                mode = "expanded kv"
                ke, ve = k.repeat_interleave(h // kvh, dim=1), v.repeat_interleave(h // kvh, dim=1)
                op = lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True)  # noqa: E731
            torch.cuda.synchronize()
            t = statistics.median(timer.samples(op, args.warmup, args.repeat)) / 1e3
            emit(dict(bench="attention", case=attention_case(seq, h, kvh, d), seq=seq, heads=h, kv_heads=kvh,
                      head_dim=d, ms=t * 1e3, tflop_s=causal_attention_flops(seq, h, d) / t / 1e12,
                      note=f"causal; scaled_dot_product_attention, {mode}", **common))


# ---- generate ----
def build_model(shape: str, torch):
    import transformers
    from transformers import AutoModelForCausalLM, Qwen2Config

    s = SHAPES[shape]
    config = Qwen2Config(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=s["tied"], use_sliding_window=False, hidden_act="silu", initializer_range=0.02,
        bos_token_id=None, eos_token_id=None, pad_token_id=0)
    assert config.hidden_size // config.num_attention_heads == s["head_dim"]
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:  # transformers before the dtype keyword
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    return model, transformers.__version__


def run_generate(args, torch) -> None:
    from transformers import GenerationConfig

    device = torch.cuda.get_device_name()
    built = {}
    for shape, batch in args.runs:
        if shape not in built:
            built.clear()  # one model on the device at a time
            torch.cuda.empty_cache()
            t0 = time.perf_counter()
            built[shape] = build_model(shape, torch)
            torch.cuda.synchronize()
            init_s = time.perf_counter() - t0
        model, tf_version = built[shape]
        s = SHAPES[shape]
        P, G = args.prompt_len, args.new_tokens
        gen = torch.Generator(device="cuda").manual_seed(args.seed)
        ids = torch.randint(0, s["vocab"], (batch, P), device="cuda", generator=gen)
        mask = torch.ones_like(ids)

        def call(new_tokens: int) -> tuple[float, int]:
            config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      pad_token_id=0, eos_token_id=None, bos_token_id=None,
                                      cache_implementation="static" if args.cache == "static" else None)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            torch.cuda.synchronize()
            return time.perf_counter() - t0, int(out.shape[1] - P) * batch

        # Warm-up at the same shapes: allocator, cuBLAS plans, and for the static cache the compilation.
        warmup_s, _ = call(G if args.cache == "static" else min(G, args.warmup_tokens))
        best = None
        for _ in range(args.repeat):
            total_s, generated = call(G)
            if generated != batch * G:
                raise SystemExit(f"peer_gpu.py: generated {generated} tokens, expected {batch * G}")
            best = total_s if best is None else min(best, total_s)
        line = dict(bench="decode" if batch == 1 else "generate", impl=f"transformers-{args.cache}",
                    case=decode_case(shape, batch, P, G), device=device, torch=torch.__version__,
                    transformers=tf_version, shape=shape, batch=batch, prompt_len=P, new_tokens=G,
                    init_s=init_s, warmup_s=warmup_s, total_s=best, out_tok_s=batch * G / best,
                    repeat=args.repeat)
        if batch == 1 or args.decode_phase:
            first_s = min(call(1)[0] for _ in range(args.repeat))
            decode_s = max(best - first_s, 1e-9)
            step_s = decode_s / (G - 1)
            weight_bytes = decode_weight_bytes(s)
            kv_bytes = batch * kv_read_bytes(s, P + G / 2.0)
            line.update(prefill_s=first_s, prefill_tok_s=batch * P / first_s, decode_s=decode_s,
                        decode_tok_s=batch * (G - 1) / decode_s, ms_per_step=step_s * 1e3,
                        weight_bytes=weight_bytes, kv_bytes_per_step=kv_bytes,
                        bytes_per_step=weight_bytes + kv_bytes, copy_gb_s=args.copy_gbs)
            if args.copy_gbs > 0:
                floor_s = (weight_bytes + kv_bytes) / (args.copy_gbs * 1e9)
                line.update(floor_ms_per_step=floor_s * 1e3, floor_pct=100.0 * floor_s / step_s)
        emit(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ops = sub.add_parser("ops", help="copy bandwidth, torch.matmul, scaled_dot_product_attention")
    ops.add_argument("--only", default="copy,gemm,attention")
    ops.add_argument("--copy-mib", type=int, default=2048)
    ops.add_argument("--gemm-shapes", default="8192x8192x8192,7b")
    ops.add_argument("--gemm-rows", type=int_list, default=[1, 64, 256, 4096])
    ops.add_argument("--attention-seqs", type=int_list, default=[512, 2048, 4096])
    ops.add_argument("--heads", type=int, default=28)
    ops.add_argument("--kv-heads", type=int, default=4)
    ops.add_argument("--head-dim", type=int, default=128)
    ops.add_argument("--l2-bytes", type=int, default=256 << 20)
    ops.add_argument("--warmup", type=int, default=3)
    ops.add_argument("--repeat", type=int, default=20)
    g = sub.add_parser("generate", help="transformers generate at named shapes, random weights")
    g.add_argument("--runs", type=parse_runs, required=True, help="SHAPE:BATCH,... e.g. qwen2.5-7b:64")
    g.add_argument("--prompt-len", type=int, default=128)
    g.add_argument("--new-tokens", type=int, default=256)
    g.add_argument("--cache", choices=["dynamic", "static"], default="dynamic")
    g.add_argument("--copy-gbs", type=float, default=0.0)
    g.add_argument("--warmup-tokens", type=int, default=4)
    g.add_argument("--repeat", type=int, default=1)
    g.add_argument("--decode-phase", action="store_true", help="also time the decode phase of batches above 1")
    g.add_argument("--seed", type=int, default=1)
    for p in (ops, g):
        p.add_argument("--dry-run", action="store_true", help="print the plan; import nothing heavy")
    args = ap.parse_args()

    if args.command == "ops":
        args.only = [v for v in args.only.split(",") if v]
        bad = [v for v in args.only if v not in ("copy", "gemm", "attention")]
        if bad or args.copy_mib <= 0 or args.warmup < 0 or args.repeat <= 0 or args.heads % args.kv_heads:
            ap.error(f"ops: bad --only {bad}, or a size, --warmup or --repeat out of range")
        shapes = gemm_shapes(args.gemm_shapes, args.gemm_rows)
        plan = dict(plan="peer_gpu.py ops", only=args.only, copy=copy_case(args.copy_mib << 20),
                    gemm=[gemm_case(m, n, k) for m, n, k, _ in shapes],
                    attention=[attention_case(s, args.heads, args.kv_heads, args.head_dim)
                               for s in args.attention_seqs], warmup=args.warmup, repeat=args.repeat)
    else:
        if args.prompt_len <= 0 or args.new_tokens < 2 or args.repeat <= 0 or args.copy_gbs < 0:
            ap.error("generate: --prompt-len and --repeat must be positive, --new-tokens at least 2")
        plan = dict(plan="peer_gpu.py generate", cache=args.cache, copy_gb_s=args.copy_gbs,
                    cases=[decode_case(s, b, args.prompt_len, args.new_tokens) for s, b in args.runs],
                    repeat=args.repeat)
    if args.dry_run:
        emit(plan)
        return

    try:
        import torch
    except ImportError:
        sys.exit(f"peer_gpu.py: torch is not installed for {sys.executable}")
    if not torch.cuda.is_available():
        sys.exit("peer_gpu.py: torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    (run_ops if args.command == "ops" else run_generate)(args, torch)


if __name__ == "__main__":
    main()
