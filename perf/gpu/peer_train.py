#!/usr/bin/env python3
"""The PyTorch peer of perf/gpu/bench_gpu_train: one LoRA training step with transformers + PEFT on the same
GPU, run by perf/gpu/check.sh in the same command. The same JSON fields and "case" name as the C++ bench, so
perf/gpu/report.py pairs the two lines.

    python3 perf/gpu/peer_train.py [--shape qwen2.5-7b] [--layers 8] [--seq-len 512] [--micro-batch 4]
        [--micro-batches 1] [--rank 64] [--steps 5] [--warmup 2] [--recompute] [--gemm-size 8192]
        [--nominal-tflops 989] [--device cuda|cpu] [--dry-run]

The model: Qwen2ForCausalLM built from a config of the shape's numbers (perf/gpu/peer_gpu.py's SHAPES, the
twins of slearn::reference_shape), random init, nothing downloaded; on the GPU in bf16 with sdpa attention,
the forward under torch.autocast(bfloat16) as transformers' Trainer runs with bf16 (PEFT keeps the adapter in
fp32; the autocast makes its matmuls bf16, as slearn's bf16 copy of its fp32 master). PEFT LoraConfig r 64,
alpha 16, dropout 0.05 on q, k, v, o, gate, up and down; AdamW (lr 3e-4, weight decay 0.01, torch's default
implementation); clip_grad_norm_(1.0). --recompute: gradient checkpointing (non-reentrant). A step: for each of
--micro-batches micro-batches of --micro-batch random sequences, forward with labels = the ids (transformers
shifts them: a loss on every token but each sequence's last, as the bench) and backward of loss / micro-batches;
then clipping, the optimizer step and zero_grad. torch.cuda.synchronize() around each step, --warmup untimed
steps, then the median of --steps.

FLOPs per token and MFU: the formula of bench_gpu_train.cpp (flops_per_token below is its twin); the measured
peak here is torch.matmul's bf16 --gemm-size^3 GEMM in this process, the nominal one --nominal-tflops (the
H200 SXM's datasheet dense bf16 figure, labelled nominal).

--device cpu runs the same step on the host in fp32 without autocast (a test of this script at --shape tiny).
Exit status: 0; 1 when the step fails; 3 when torch, transformers or peft is missing or torch sees no CUDA
device (the message says which). --dry-run imports nothing but the standard library.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts (the bundle copies perf/gpu)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_gpu import SHAPES, causal_attention_flops  # noqa: E402  (standard library only at import)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MISSING = 3


def train_case(shape: str, layers: int, seq_len: int, micro_batch: int, micro_batches: int, rank: int,
               recompute: bool) -> str:
    return (f"train {shape} layers={layers} seq={seq_len} mb={micro_batch}x{micro_batches} r={rank}"
            + (" recompute" if recompute else ""))


def flops_per_token(s: dict, layers: int, seq_len: int, rank: int, recompute: bool) -> dict:
    """bench_gpu_train.cpp's flops_per_token, term for term."""
    h, i = s["hidden"], s["inter"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    p_linear = layers * (h * q + 2 * h * kv + q * h + 3 * h * i)
    passes = 2.0 if recompute else 1.0
    attention_forward = layers * causal_attention_flops(seq_len, s["heads"], s["head_dim"]) / seq_len
    lora_forward = layers * sum(2.0 * rank * n for n in (h + q, h + kv, h + kv, q + h, h + i, h + i, i + h))
    terms = dict(base=2.0 * p_linear * passes + 2.0 * p_linear,
                 attention=attention_forward * passes + 2.5 * attention_forward,
                 lora=lora_forward * passes + 2.0 * lora_forward,
                 lm_head=4.0 * s["vocab"] * h)
    return terms


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def missing(what: str) -> None:
    print(f"peer_train.py: {what}", file=sys.stderr)
    sys.exit(MISSING)


def build_model(s: dict, layers: int, torch, device: str, dtype):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"], num_hidden_layers=layers,
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=s["tied"], use_sliding_window=False, hidden_act="silu", initializer_range=0.02,
        bos_token_id=None, eos_token_id=None, pad_token_id=0, use_cache=False)
    assert config.hidden_size // config.num_attention_heads == s["head_dim"]
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # transformers before the dtype keyword
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype)


def gemm_tflops(torch, n: int, device: str, dtype) -> float:
    a = torch.rand(n, n, device=device, dtype=torch.float32).to(dtype)
    b = torch.rand(n, n, device=device, dtype=torch.float32).to(dtype)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    torch.matmul(a, b.t())
    sync()
    t0 = time.perf_counter()
    torch.matmul(a, b.t())
    sync()
    calls = int(min(200, max(1, 20e-3 / max(time.perf_counter() - t0, 1e-7))))
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b.t())
        sync()
        samples.append((time.perf_counter() - t0) / calls)
    return 2.0 * n ** 3 / statistics.median(samples) / 1e12


def run(args, plan: dict) -> None:
    try:
        import torch
    except ImportError:
        missing(f"torch is not installed for {sys.executable}")
    try:
        import transformers
    except ImportError:
        missing(f"transformers is not installed for {sys.executable}")
    try:
        import peft
        from peft import LoraConfig, get_peft_model
    except ImportError:
        missing(f"peft is not installed for {sys.executable}")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        missing("torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = torch.bfloat16 if cuda else torch.float32
    s = SHAPES[args.shape]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    peak = gemm_tflops(torch, args.gemm_size, args.device, dtype)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = build_model(s, args.layers, torch, args.device, dtype)
    lora = LoraConfig(r=args.rank, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if args.recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    batches = [torch.randint(0, s["vocab"], (args.micro_batch, args.seq_len), device=args.device, generator=gen)
               for _ in range(args.micro_batches)]
    sync()
    init_s = time.perf_counter() - t0

    def step() -> tuple[float, float]:
        sync()
        start = time.perf_counter()
        last_loss = None
        for ids in batches:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                out = model(input_ids=ids, labels=ids)
            (out.loss / len(batches)).backward()
            last_loss = out.loss.detach()  # read after the step's synchronisation, not inside the timed loop
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        elapsed = time.perf_counter() - start
        return elapsed, float(last_loss)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup_s = sum(step()[0] for _ in range(args.warmup))
    seconds, loss = [], float("nan")
    for _ in range(args.steps):
        t, loss = step()
        seconds.append(t)
    step_s = statistics.median(seconds)
    tokens = args.micro_batches * args.micro_batch * args.seq_len
    tokens_per_s = tokens / step_s
    achieved = plan["flop_per_token"] * tokens_per_s / 1e12
    line = dict(bench="train", impl="transformers-peft" if cuda else "transformers-peft-cpu", case=plan["case"],
                device=torch.cuda.get_device_name() if cuda else "host", torch=torch.__version__,
                transformers=transformers.__version__, peft=peft.__version__, shape=args.shape, layers=args.layers,
                seq_len=args.seq_len, micro_batch=args.micro_batch, micro_batches=args.micro_batches,
                rank=args.rank, alpha=16, dropout=0.05, recompute=args.recompute, autocast=cuda,
                parameters=sum(p.numel() for p in model.parameters() if not p.requires_grad),  # the base's, as slearn's
                lora_parameters=sum(p.numel() for p in params), tokens_per_step=tokens, init_s=init_s,
                warmup=args.warmup, warmup_s=warmup_s, steps=args.steps, step_s=step_s, step_s_min=min(seconds),
                tokens_per_s=tokens_per_s, loss=loss, flop_per_token=plan["flop_per_token"],
                flop_terms=plan["flop_terms"], achieved_tflop_s=achieved, gemm_size=args.gemm_size,
                gemm_tflop_s=peak, mfu_measured_pct=100.0 * achieved / peak)
    if cuda:
        line.update(nominal_peak_tflop_s=args.nominal_tflops,
                    nominal_peak_note="nominal: H200 SXM dense bf16 datasheet figure, not measured",
                    mfu_nominal_pct=100.0 * achieved / args.nominal_tflops,
                    device_peak_allocated_bytes=torch.cuda.max_memory_allocated())
    emit(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0: the shape's own)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("--micro-batches", type=int, default=1, help="micro-batches per step")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--recompute", action="store_true", help="gradient checkpointing")
    ap.add_argument("--gemm-size", type=int, default=0,
                    help="n of the measured n^3 GEMM (0: 8192 on cuda, 512 on cpu)")
    ap.add_argument("--nominal-tflops", type=float, default=989.0)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dry-run", action="store_true", help="print the plan; import nothing heavy")
    args = ap.parse_args()
    if (args.layers < 0 or args.seq_len < 2 or args.micro_batch <= 0 or args.micro_batches <= 0 or args.rank <= 0
            or args.steps <= 0 or args.warmup < 0 or args.gemm_size < 0 or args.nominal_tflops <= 0):
        ap.error("--seq-len must be at least 2; --micro-batch, --micro-batches, --rank, --steps positive; "
                 "--layers, --warmup, --gemm-size not negative")
    s = SHAPES[args.shape]
    args.layers = args.layers or s["layers"]
    args.gemm_size = args.gemm_size or (8192 if args.device == "cuda" else 512)
    terms = flops_per_token(s, args.layers, args.seq_len, args.rank, args.recompute)
    plan = dict(plan="peer_train.py", case=train_case(args.shape, args.layers, args.seq_len, args.micro_batch,
                                                      args.micro_batches, args.rank, args.recompute),
                device=args.device, tokens_per_step=args.micro_batches * args.micro_batch * args.seq_len,
                flop_per_token=sum(terms.values()), flop_terms=terms, gemm_size=args.gemm_size,
                warmup=args.warmup, steps=args.steps)
    if args.dry_run:
        emit(plan)
        return
    run(args, plan)


if __name__ == "__main__":
    main()
