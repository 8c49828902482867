#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the project's real files:
fixture safetensors headers, lines of the shared data sets and the dataset fixtures, the configs, the
judge replies and the tokenizer encode cases. Deterministic; standard library only. The outputs are
committed; run it again after changing a target's input layout:  python3 fuzz/make_corpus.py
"""
import hashlib
import json
import os
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def write(target, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def lines(path, count, step=1, max_bytes=1500):
    """The first `count` lines taken every `step` lines, each at most max_bytes long (whole lines only)."""
    out = []
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if len(out) >= count:
                break
            if i % step == 0 and len(line) <= max_bytes:
                out.append(line)
    return out


def fixture(*parts):
    return os.path.join(ROOT, "tests", "fixtures", *parts)


def safetensors():
    # Layout: byte 0 even -> the file as is; odd -> header JSON, NUL, data (the length is filled in).
    files = [fixture("lora", "llama-bf16", "adapter", "adapter_model.safetensors"),
             fixture("models", "qwen2-untied-theta1e6", "model-00003-of-00003.safetensors"),
             fixture("golden", "qwen2-gqa-tied", "logits.safetensors")]
    for path in files:
        with open(path, "rb") as f:
            blob = f.read()
        (length,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + length])
        # A small file of the same shape: the first two tensors, shrunk to a few elements.
        small = {}
        offset = 0
        for name in sorted(k for k in header if k != "__metadata__")[:2]:
            entry = header[name]
            size = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1}[entry["dtype"]]
            small[name] = {"dtype": entry["dtype"], "shape": [2, 3], "data_offsets": [offset, offset + 6 * size]}
            offset += 6 * size
        if "__metadata__" in header:
            small["__metadata__"] = header["__metadata__"]
        text = json.dumps(small, separators=(",", ":")).encode()
        write("safetensors", b"\x01" + text + b"\x00" + bytes(range(offset)))
        write("safetensors", b"\x00" + struct.pack("<Q", len(text)) + text + bytes(range(offset)))
        # The real header with the start of the data (the parser reports the truncation).
        write("safetensors", b"\x00" + blob[:8 + length + 64])
    write("safetensors", b"\x01{}\x00")
    write("safetensors", b'\x01{"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]},'
                         b'"e":{"dtype":"F32","shape":[0,4],"data_offsets":[1,1]}}\x00x')


def tokenizer():
    # Byte 0: bits 0-1 the tokenizer (0/1 Qwen, 2 bytelevel-tiny, 3 spbpe-tiny), bit 2 decode, bit 3 special.
    cases = []
    qwen_cases = os.path.join(SHARED, "qwen-tokenizer", "encode-cases.jsonl")
    for line in lines(qwen_cases, 40):
        case = json.loads(line)
        cases.append((0, case["text"], case["ids"]))
    for name, selector in (("bytelevel-tiny", 2), ("spbpe-tiny", 3)):
        for line in lines(fixture("tokenizers", name, "encode-cases.jsonl"), 12, step=5) + \
                lines(fixture("tokenizers", name, "encode-cases-special.jsonl"), 4):
            case = json.loads(line)
            cases.append((selector, case["text"], case["ids"]))
    for selector, text, ids in cases:
        write("tokenizer", bytes([selector]) + text.encode("utf-8", "surrogatepass"))
        if ids:
            write("tokenizer", bytes([selector | 4]) + b"".join(struct.pack("<I", i) for i in ids[:64]))
    write("tokenizer", b"\x08<|im_start|>user\nHello<|im_end|>\n")
    write("tokenizer", b"\x0b plain text with spaces")


def dataset():
    # Byte 0: bits 0-1 the format (auto, qa, alpaca, sharegpt), bit 2 skip, bit 3 max_records 2, bit 4 no id.
    for name, selector in (("qa.jsonl", 0), ("qa-array.json", 1), ("alpaca.jsonl", 2), ("sharegpt.json", 3),
                           ("bad-records.jsonl", 4), ("gb18030.jsonl", 6)):
        with open(fixture("datasets", name), "rb") as f:
            write("dataset", bytes([selector]) + f.read())
    with open(fixture("datasets", "bad-records.jsonl"), "rb") as f:
        write("dataset", b"\x05" + f.read())
    for name, selector in (("huatuo-med-zh.jsonl", 2), ("medquad-en.jsonl", 1), ("pubmedqa-labelled-en.jsonl", 0)):
        chosen = lines(os.path.join(SHARED, "datasets", name), 3, step=97, max_bytes=1200)
        write("dataset", bytes([selector]) + b"".join(chosen))
        write("dataset", bytes([selector | 4 | 8]) + b"".join(chosen[:2]))
    write("dataset", b"\x00[]")
    write("dataset", b'\x10[{"question": "a[\\"{,", "answer": "b"}, {"question": "c", "answer": "d"}]')


def config():
    # Byte 0 bit 0: run config (0) or train config (1); "<YAML>\0<overrides, one a line>".
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if not name.endswith(".yaml"):
            continue
        with open(os.path.join(ROOT, "configs", name), "rb") as f:
            text = f.read()
        selector = 1 if name.startswith("train-") else 0
        write("config", bytes([selector]) + text)
    with open(fixture("pipeline-tiny.yaml"), "rb") as f:
        write("config", b"\x00" + f.read() + b"\x00lora.r=4\njudge.kind=rule\nthreads=null")
    write("config", b"\x01model: m\nrun_dir: r\ndata:\n  path: d.jsonl\n\x00train.epochs=2\ndata.system_prompt='x: y'")
    # Former findings (tests/fixtures/fuzz-regressions/config-*.yaml).
    folder = fixture("fuzz-regressions")
    for name in sorted(os.listdir(folder)):
        if name.startswith("config-") and name.endswith(".yaml"):
            with open(os.path.join(folder, name), "rb") as f:
                write("config", b"\x00" + f.read())


def judge():
    with open(fixture("judge", "replies.jsonl"), encoding="utf-8") as f:
        for line in f:
            reply = json.loads(line)["reply"]
            write("judge", reply)
    write("judge", "yes\x00Yes, it is.\x04")
    write("judge", "3.5\x00The answer is 3.50 mg\x05")
    write("judge", "B\x00答案是 B\x03")


def main():
    targets = {"safetensors": safetensors, "tokenizer": tokenizer, "dataset": dataset, "config": config,
               "judge": judge}
    chosen = sys.argv[1:] or list(targets)
    for target in chosen:
        shutil.rmtree(os.path.join(OUT, target), ignore_errors=True)
        targets[target]()
        folder = os.path.join(OUT, target)
        files = os.listdir(folder)
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in files)
        print(f"{target}: {len(files)} files, {size} bytes")


if __name__ == "__main__":
    main()
