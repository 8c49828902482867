#!/usr/bin/env python3
"""The report of perf/gpu/check.sh: report.md and report.json from the check's work folder. Standard library only.

    python3 perf/gpu/report.py build --work WORK --out OUT
    python3 perf/gpu/report.py copy-gbs FILE.jsonl...      prints slearn's copy bandwidth (GB/s), 0 if none
    python3 perf/gpu/report.py demo-note FILE.jsonl        one line on demo_gpu_vs_cpu.sh's result (check.sh's note)
    python3 perf/gpu/report.py self-test                   checks this file's own logic on made-up input

WORK holds what check.sh wrote: steps.tsv (step, status, seconds, note), env.txt ("key: value" lines),
results/STEP.jsonl (the benches' JSON lines), gpu_tests.json (gtest's JSON) and logs/STEP.log.

Every figure is normalised as docs/performance.md asks: GB/s (bytes read + written), TFLOP/s and its
percentage of the best bf16 GEMM measured in the same run ("measured peak"), tok/s and the percentage of the
decode floor (the bytes a step must read at the copy bandwidth measured in the same run), and the ratio
slearn / peer for each case both measured (above 1: slearn is faster). The LoRA training step (bench "train":
bench_gpu_train and peer_train.py) is given as tok/s and MFU: against the GEMM each program measured itself,
against the run's measured peak, and against the nominal H200 peak; the demo comparison (bench "demo",
demo_gpu_vs_cpu.sh) as both backends' accuracies and times with its verdict.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

# The figure compared for each bench (higher is better for all of them).
METRIC = {"copy": "gb_s", "gemm": "tflop_s", "attention": "tflop_s", "decode": "decode_tok_s",
          "generate": "out_tok_s", "train": "tokens_per_s"}


def is_ours(line: dict) -> bool:
    return str(line.get("impl", "")).startswith("slearn")


def read_jsonl(path: str, step: str) -> tuple[list[dict], list[dict], list[str]]:
    """Results, plans and unparsable lines of one benchmark step's output."""
    results, plans, junk = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                junk.append(f"{step}: {raw[:200]}")
                continue
            if not isinstance(line, dict):
                junk.append(f"{step}: {raw[:200]}")
                continue
            line["step"] = step
            (plans if "plan" in line else results).append(line)
    return results, plans, junk


def copy_gbs(lines: list[dict]) -> float:
    best = [l["gb_s"] for l in lines if l.get("bench") == "copy" and is_ours(l) and l.get("gb_s")]
    return max(best) if best else 0.0


def read_steps(path: str) -> list[dict]:
    steps = []
    if not os.path.exists(path):
        return steps
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            parts = raw.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            name, status, seconds = parts[0], parts[1], parts[2]
            note = parts[3] if len(parts) > 3 else ""
            try:
                secs = float(seconds)
            except ValueError:
                secs = None
            steps.append(dict(step=name, status=status, seconds=secs, note=note))
    return steps


def read_env(path: str) -> dict:
    env = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for raw in f:
                key, sep, value = raw.rstrip("\n").partition(": ")
                if sep:
                    env[key.strip()] = value.strip() if key.strip() not in env else env[key.strip()] + "; " + value
    return env


def read_gtest(path: str, log_path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return dict(error=f"unreadable gtest JSON: {e}")
    tests, failed, skipped = [], [], []
    for suite in data.get("testsuites", []):
        for t in suite.get("testsuite", []):
            name = f"{suite.get('name')}.{t.get('name')}"
            failures = [x.get("failure", "") for x in t.get("failures", [])]
            result = "failed" if failures else ("skipped" if t.get("result") == "SKIPPED" else "passed")
            tests.append(dict(name=name, result=result, time=t.get("time"), failures=failures))
            if failures:
                failed.append(name)
            elif result == "skipped":
                skipped.append(name)
    measured = []
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            measured = [l.rstrip() for l in f if "[ measured ]" in l]
    return dict(total=len(tests), failed=failed, skipped=skipped,
                passed=len(tests) - len(failed) - len(skipped), tests=tests, measured=measured)


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def compare(results: list[dict]) -> list[dict]:
    """For each case with a slearn line: one row per peer line of the same case (or one row without a peer)."""
    rows = []
    cases: dict[str, list[dict]] = {}
    for line in results:
        if "case" in line and line.get("bench") in METRIC:
            cases.setdefault(line["case"], []).append(line)
    for case, lines in cases.items():
        ours = [l for l in lines if is_ours(l)]
        peers = [l for l in lines if not is_ours(l)]
        bench = lines[0]["bench"]
        metric = METRIC[bench]
        mine = ours[0] if ours else None
        for peer in peers or [None]:
            a = mine.get(metric) if mine else None
            b = peer.get(metric) if peer else None
            rows.append(dict(bench=bench, case=case, metric=metric, slearn=a,
                             peer_impl=peer.get("impl") if peer else None, peer=b,
                             ratio=(a / b) if (a and b) else None))
    return rows


def demo_note(lines: list[dict]) -> str:
    demos = [l for l in lines if l.get("bench") == "demo"]
    if not demos:
        return "no result line"
    d = demos[-1]
    def after(r):
        return fmt(100.0 * r["accuracy_after"], 1) if r.get("accuracy_after") is not None else "—"

    runs = ", ".join(f"{r.get('backend')} {after(r)}% after in {fmt(r.get('wall_s'), 1)}s" for r in d.get("runs", []))
    return f"{runs}: {d.get('verdict')}"


def build(work: str, out: str) -> int:
    steps = read_steps(os.path.join(work, "steps.tsv"))
    env = read_env(os.path.join(work, "env.txt"))
    results, plans, junk = [], [], []
    rdir = os.path.join(work, "results")
    if os.path.isdir(rdir):
        for name in sorted(os.listdir(rdir)):
            if name.endswith(".jsonl"):
                r, p, j = read_jsonl(os.path.join(rdir, name), name[: -len(".jsonl")])
                results += r
                plans += p
                junk += j
    gtest = read_gtest(os.path.join(work, "gpu_tests.json"), os.path.join(work, "logs", "gpu-tests.log"))
    copy = copy_gbs(results)
    gemms = [l for l in results if l.get("bench") == "gemm" and l.get("tflop_s")]
    peak_line = max(gemms, key=lambda l: l["tflop_s"]) if gemms else None
    peak = peak_line["tflop_s"] if peak_line else None
    for l in results:
        if l.get("bench") in ("gemm", "attention") and peak and l.get("tflop_s"):
            l["pct_of_measured_peak"] = 100.0 * l["tflop_s"] / peak
        if l.get("bench") == "gemm" and copy and l.get("gb_s"):
            l["pct_of_copy_bw"] = 100.0 * l["gb_s"] / copy
        if l.get("bench") == "train" and peak and l.get("achieved_tflop_s"):
            l["mfu_run_peak_pct"] = 100.0 * l["achieved_tflop_s"] / peak
    comparisons = compare(results)
    mode = env.get("mode", "unknown")
    failed_steps = [s["step"] for s in steps if s["status"] == "failed"]

    report = dict(generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  mode=mode, env=env, steps=steps, failed_steps=failed_steps, gpu_tests=gtest,
                  copy_gb_s=copy or None, measured_peak_tflop_s=peak,
                  measured_peak_case=(f"{peak_line['case']} ({peak_line['impl']})" if peak_line else None),
                  results=results, comparisons=comparisons, plans=plans, unparsed_output=junk)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown(report))
    print(f"report: {os.path.join(out, 'report.md')} and report.json ({len(results)} results, "
          f"{len(steps)} steps, {len(failed_steps)} failed)")
    return 0


def markdown(r: dict) -> str:
    env, results = r["env"], r["results"]
    md = [f"# slearn GPU check ({r['mode']}), {r['generated']}", ""]
    md.append(f"Device: {env.get('gpu', 'none seen')}. Driver: {env.get('driver', '—')}. "
              f"Binaries: {env.get('bin', '—')}. Peers: torch {env.get('torch', '—')}, "
              f"transformers {env.get('transformers', '—')}.")
    md += ["", "## Steps", "", "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
    for s in r["steps"]:
        md.append(f"| {s['step']} | {s['status']} | {fmt(s['seconds'])} | {s['note'].replace('|', '/')} |")

    g = r["gpu_tests"]
    md += ["", "## GPU tests", ""]
    if not g:
        md.append("No gtest JSON (the step did not run or wrote none).")
    elif "error" in g:
        md.append(g["error"])
    else:
        md.append(f"{g['total']} tests: {g['passed']} passed, {len(g['failed'])} failed, {len(g['skipped'])} skipped.")
        for name in g["failed"]:
            md.append(f"- FAILED {name}")
        if g["measured"]:
            md += ["", "Measured errors (tests/gpu print them):", "", "```"] + g["measured"][:80] + ["```"]

    def of(bench):
        return [l for l in results if l.get("bench") == bench]

    def peer_of(line, impl_prefix=None):
        return [p for p in results if p.get("case") == line.get("case") and not is_ours(p)
                and (impl_prefix is None or str(p.get("impl", "")).startswith(impl_prefix))]

    md += ["", "## Copy bandwidth (device to device, bytes read + written)", ""]
    copies = of("copy")
    if copies:
        md += ["| impl | case | GB/s | ms |", "| --- | --- | --- | --- |"]
        md += [f"| {l['impl']} | {l['case']} | {fmt(l.get('gb_s'))} | {fmt(l.get('ms'), 3)} |" for l in copies]
        md.append("")
        md.append(f"The decode floors below use slearn's figure: {fmt(r['copy_gb_s'])} GB/s.")
    else:
        md.append("Not measured.")

    md += ["", "## GEMM (bf16 operands, fp32 accumulation)", ""]
    if of("gemm"):
        md.append(f"Measured peak: {fmt(r['measured_peak_tflop_s'])} TFLOP/s ({r['measured_peak_case']}). "
                  "GB/s counts each operand once; % of copy is that against the copy bandwidth.")
        md += ["", "| case | what | slearn TFLOP/s | % of peak | slearn GB/s | % of copy | torch TFLOP/s | ratio |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for l in (x for x in of("gemm") if is_ours(x)):
            p = next(iter(peer_of(l)), {})
            md.append(f"| {l['case']} | {l.get('what', '')} | {fmt(l.get('tflop_s'))} | "
                      f"{fmt(l.get('pct_of_measured_peak'))} | {fmt(l.get('gb_s'))} | {fmt(l.get('pct_of_copy_bw'))} | "
                      f"{fmt(p.get('tflop_s'))} | {ratio(l, p, 'tflop_s')} |")
    else:
        md.append("Not measured.")

    md += ["", "## Prefill attention (causal, one sequence)", ""]
    if of("attention"):
        md += ["| case | slearn TFLOP/s | % of peak | torch SDPA TFLOP/s | ratio | slearn ms | torch ms |",
               "| --- | --- | --- | --- | --- | --- | --- |"]
        for l in (x for x in of("attention") if is_ours(x)):
            p = next(iter(peer_of(l)), {})
            md.append(f"| {l['case']} | {fmt(l.get('tflop_s'))} | {fmt(l.get('pct_of_measured_peak'))} | "
                      f"{fmt(p.get('tflop_s'))} | {ratio(l, p, 'tflop_s')} | {fmt(l.get('ms'), 3)} | "
                      f"{fmt(p.get('ms'), 3)} |")
    else:
        md.append("Not measured.")

    md += ["", "## Batch-1 decode (random weights, greedy)", ""]
    decodes = of("decode")
    if decodes:
        md += ["| case | impl | prefill tok/s | decode tok/s | ms/step | GB read/step | floor ms | % of floor | "
               "slearn / this |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for l in sorted(decodes, key=lambda x: (x["case"], not is_ours(x), x.get("impl", ""))):
            ours = next((x for x in decodes if x["case"] == l["case"] and is_ours(x)), {})
            md.append(f"| {l['case']} | {l.get('impl')} | {fmt(l.get('prefill_tok_s'))} | "
                      f"{fmt(l.get('decode_tok_s'))} | {fmt(l.get('ms_per_step'), 2)} | "
                      f"{fmt((l.get('bytes_per_step') or 0) / 1e9, 2)} | {fmt(l.get('floor_ms_per_step'), 2)} | "
                      f"{fmt(l.get('floor_pct'))} | {'—' if is_ours(l) else ratio(ours, l, 'decode_tok_s')} |")
    else:
        md.append("Not measured.")

    md += ["", "## Batched generation (random weights, greedy, output tok/s over the whole call)", ""]
    gens = of("generate")
    if gens:
        md += ["| case | impl | out tok/s | total s | prefill s | decode-phase tok/s | % of floor (decode) | "
               "warm-up s | slearn / this |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for l in sorted(gens, key=lambda x: (x["case"], not is_ours(x), x.get("impl", ""))):
            ours = next((x for x in gens if x["case"] == l["case"] and is_ours(x)), {})
            md.append(f"| {l['case']} | {l.get('impl')} | {fmt(l.get('out_tok_s'))} | {fmt(l.get('total_s'), 2)} | "
                      f"{fmt(l.get('prefill_s'), 2)} | {fmt(l.get('decode_tok_s'))} | {fmt(l.get('floor_pct'))} | "
                      f"{fmt(l.get('warmup_s'), 1)} | {'—' if is_ours(l) else ratio(ours, l, 'out_tok_s')} |")
    else:
        md.append("Not measured.")

    md += ["", "## LoRA training step (random weights, r 64, alpha 16, dropout 0.05, all seven projections)", ""]
    trains = of("train")
    if trains:
        md.append("FLOPs per token: bench_gpu_train.cpp's formula (base forward and input gradients, attention, "
                  "LoRA, LM head). MFU = FLOPs/token x tok/s over: the bf16 GEMM each program timed itself (own), "
                  "the run's measured peak (run), the nominal H200 dense bf16 peak (nominal, a datasheet figure).")
        md += ["", "| case | impl | tok/s | step s | GFLOP/token | TFLOP/s | MFU % own | own GEMM TFLOP/s | "
               "MFU % run | MFU % nominal | memory GB | slearn / this |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for l in sorted(trains, key=lambda x: (x["case"], not is_ours(x), x.get("impl", ""))):
            ours = next((x for x in trains if x["case"] == l["case"] and is_ours(x)), {})
            memory = l.get("device_used_bytes") or l.get("device_peak_allocated_bytes")
            md.append(f"| {l['case']} | {l.get('impl')} | {fmt(l.get('tokens_per_s'))} | {fmt(l.get('step_s'), 3)} | "
                      f"{fmt((l.get('flop_per_token') or 0) / 1e9, 2)} | {fmt(l.get('achieved_tflop_s'))} | "
                      f"{fmt(l.get('mfu_measured_pct'))} | {fmt(l.get('gemm_tflop_s'))} | "
                      f"{fmt(l.get('mfu_run_peak_pct'))} | {fmt(l.get('mfu_nominal_pct'))} | "
                      f"{fmt(memory / 1e9 if memory else None, 1)} | "
                      f"{'—' if is_ours(l) else ratio(ours, l, 'tokens_per_s')} |")
        md.append("")
        md.append("Memory: slearn's is the device memory in use after the steps (its pool keeps freed blocks), "
                  "torch's its peak allocation.")
    else:
        md.append("Not measured.")

    md += ["", "## The demo on two backends (configs/demo.yaml, the same job on each)", ""]
    demos = of("demo")
    if demos:
        for d in demos:
            md += [f"{d.get('case')}: **{d.get('verdict')}** (the same wrong answers selected: "
                   f"{'yes' if d.get('same_selection') else 'no'}; accuracy after differs by "
                   f"{fmt(d.get('accuracy_after_diff_points'), 2)} points, "
                   f"tolerance {fmt(d.get('tolerance_points'))}).",
                   "", "| run | backend | exit | accuracy before | accuracy after | incorrect | selected | train s | "
                   "wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for n, run in enumerate(d.get("runs", []), 1):
                pct = lambda v: fmt(100.0 * v, 1) if isinstance(v, (int, float)) else "—"  # noqa: E731
                md.append(f"| {n} | {run.get('backend')} | {run.get('rc')} | {pct(run.get('accuracy_before'))} | "
                          f"{pct(run.get('accuracy_after'))} | {fmt(run.get('incorrect'))} | "
                          f"{fmt(run.get('selected'))} | {fmt((run.get('stage_s') or {}).get('train'), 2)} | "
                          f"{fmt(run.get('wall_s'), 2)} |")
            md.append("")
    else:
        md.append("Not run.")

    if r["plans"]:
        md += ["", "## Plans (dry run: the GPU commands' arguments, validated)", ""]
        md += [f"- {p['step']}: `{json.dumps({k: v for k, v in p.items() if k != 'step'})}`" for p in r["plans"]]
    if r["unparsed_output"]:
        md += ["", "## Output that was not a JSON line", ""] + [f"- `{j}`" for j in r["unparsed_output"][:40]]
    md += ["", "Ratios are slearn / peer on the same GPU in the same run (above 1: slearn faster). "
           "Steps' logs: steps.log; every result line: results.jsonl; gtest's JSON: gpu_tests.json.", ""]
    return "\n".join(md)


def ratio(ours: dict, peer: dict, metric: str) -> str:
    a, b = (ours or {}).get(metric), (peer or {}).get(metric)
    return f"{a / b:.2f}x" if a and b else "—"


def self_test() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "results"))
        os.makedirs(os.path.join(work, "logs"))
        lines = {
            "ops": [dict(bench="copy", impl="slearn-cuda", case="copy 2048 MiB", gb_s=4000.0, ms=1.0),
                    dict(bench="gemm", impl="slearn-cuda", case="gemm m=1 n=2 k=3", tflop_s=100.0, gb_s=2000.0),
                    dict(bench="gemm", impl="slearn-cuda", case="gemm m=8 n=8 k=8", tflop_s=800.0, gb_s=10.0)],
            "ops-peer": [dict(bench="gemm", impl="torch", case="gemm m=1 n=2 k=3", tflop_s=50.0),
                         dict(bench="copy", impl="torch", case="copy 2048 MiB", gb_s=4100.0)],
            "decode": [dict(bench="decode", impl="slearn-cuda", case="decode x b=1", decode_tok_s=200.0,
                            floor_pct=80.0, bytes_per_step=1e9)],
            "decode-peer": [dict(bench="decode", impl="transformers-dynamic", case="decode x b=1",
                                 decode_tok_s=40.0), dict(plan="peer")],
            "train-7b": [dict(bench="train", impl="slearn-cuda", case="train t", tokens_per_s=3000.0,
                              achieved_tflop_s=400.0, mfu_measured_pct=50.0, flop_per_token=1e10)],
            "peer-train-7b": [dict(bench="train", impl="transformers-peft", case="train t", tokens_per_s=2000.0)],
            "demo-gpu-vs-cpu": [dict(bench="demo", case="demo cpu vs cuda", verdict="agree", same_selection=True,
                                     accuracy_after_diff_points=0.5, tolerance_points=1.0,
                                     runs=[dict(backend="cpu", rc=0, accuracy_after=1.0, wall_s=9.0),
                                           dict(backend="cuda", rc=0, accuracy_after=0.995, wall_s=4.0)])],
        }
        for step, ls in lines.items():
            with open(os.path.join(work, "results", step + ".jsonl"), "w") as f:
                f.write("\n".join(json.dumps(l) for l in ls) + "\nnot json\n")
        with open(os.path.join(work, "steps.tsv"), "w") as f:
            f.write("env\tok\t1.5\t\nops\tfailed\t3\texit 1 | odd\n")
        with open(os.path.join(work, "env.txt"), "w") as f:
            f.write("mode: self-test\ngpu: made up\n")
        with open(os.path.join(work, "gpu_tests.json"), "w") as f:
            json.dump({"testsuites": [{"name": "S", "testsuite": [
                {"name": "a", "result": "COMPLETED"}, {"name": "b", "result": "SKIPPED"},
                {"name": "c", "result": "COMPLETED", "failures": [{"failure": "boom"}]}]}]}, f)
        out = os.path.join(work, "out")
        build(work, out)
        with open(os.path.join(out, "report.json")) as f:
            rep = json.load(f)
        checks = [
            (rep["copy_gb_s"] == 4000.0, "copy bandwidth is slearn's"),
            (rep["measured_peak_tflop_s"] == 800.0, "measured peak is the best GEMM"),
            (any(c["case"] == "gemm m=1 n=2 k=3" and c["ratio"] == 2.0 for c in rep["comparisons"]), "gemm ratio"),
            (any(c["case"] == "decode x b=1" and c["ratio"] == 5.0 for c in rep["comparisons"]), "decode ratio"),
            (rep["failed_steps"] == ["ops"], "failed steps"),
            (rep["gpu_tests"]["failed"] == ["S.c"] and rep["gpu_tests"]["skipped"] == ["S.b"], "gtest parse"),
            (len(rep["plans"]) == 1 and len(rep["unparsed_output"]) == 7, "plans and junk kept apart"),
            (any(c["case"] == "train t" and c["ratio"] == 1.5 for c in rep["comparisons"]), "train ratio"),
            (any(l.get("mfu_run_peak_pct") == 50.0 for l in rep["results"]), "train MFU against the run's peak"),
            (copy_gbs(rep["results"]) == 4000.0, "copy-gbs"),
        ]
        md = open(os.path.join(out, "report.md")).read()
        checks.append(("2.00x" in md and "5.00x" in md and "exit 1 / odd" in md, "markdown ratios and notes"))
        checks.append((demo_note(rep["results"]) == "cpu 100.0% after in 9.0s, cuda 99.5% after in 4.0s: agree",
                       "demo note"))
        checks.append(("1.50x" in md and "**agree**" in md and "| 2 | cuda | 0 | — | 99.5 |" in md,
                       "markdown training and demo rows"))
    bad = [what for ok, what in checks if not ok]
    for what in bad:
        print(f"report.py self-test: FAILED: {what}", file=sys.stderr)
    print(f"report.py self-test: {len(checks) - len(bad)} of {len(checks)} checks passed")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--work", required=True)
    b.add_argument("--out", required=True)
    c = sub.add_parser("copy-gbs")
    c.add_argument("files", nargs="+")
    d = sub.add_parser("demo-note")
    d.add_argument("file")
    sub.add_parser("self-test")
    args = ap.parse_args()
    if args.command == "build":
        return build(args.work, args.out)
    if args.command == "copy-gbs":
        lines = []
        for path in args.files:
            if os.path.exists(path):
                lines += read_jsonl(path, "copy")[0]
        print(f"{copy_gbs(lines):.1f}")
        return 0
    if args.command == "demo-note":
        print(demo_note(read_jsonl(args.file, "demo")[0] if os.path.exists(args.file) else []))
        return 0
    return self_test()


if __name__ == "__main__":
    sys.exit(main())
