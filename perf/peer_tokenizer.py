#!/usr/bin/env python3
"""Python peer for the tokenizer benchmark: HF `tokenizers`, single-threaded, one encode call per text.

    /opt/slearn-ref/bin/python perf/peer_tokenizer.py --tokenizer DIR --texts FILE.jsonl \
        [--field-list question,answer,output,instruction,input] [--repeat 3]

Prints one JSON line:
    {"impl":"hf-tokenizers","version":...,"texts":N,"bytes":B,"tokens":T,"seconds":s,
     "mb_per_s":...,"ids_sha256":...}

`bytes` is the UTF-8 size of all texts, `seconds` the best of --repeat timed passes, `mb_per_s` is
bytes / 1e6 / seconds, `cold_mb_per_s` the same for the first pass (word cache empty), and `ids_sha256` is SHA-256 over every id as little-endian int32, texts in file
order then --field-list order (a record's missing or non-string fields are skipped), so a C++ run can prove it produced identical ids.
"""
from __future__ import annotations

import os

# Must be set before tokenizers is imported.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402
from pathlib import Path  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

DEFAULT_FIELDS = "question,answer,output,instruction,input,context,long_answer"


def load_texts(path: Path, fields: list[str]) -> list[str]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            for k in fields:
                v = rec.get(k)
                if isinstance(v, str):  # empty strings count as texts (they add no ids)
                    texts.append(v)
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="directory with tokenizer.json (or the file itself)")
    ap.add_argument("--texts", required=True, help="JSONL data set")
    ap.add_argument("--field-list", default=DEFAULT_FIELDS,
                    help=f"comma-separated string fields to take from each record (default {DEFAULT_FIELDS})")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    args = ap.parse_args()

    tpath = Path(args.tokenizer)
    if tpath.is_dir():
        tpath = tpath / "tokenizer.json"
    tok = Tokenizer.from_file(str(tpath))
    fields = [f.strip() for f in args.field_list.split(",") if f.strip()]
    texts = load_texts(Path(args.texts), fields)
    if not texts:
        sys.exit("no texts found for the given fields")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)

    encode = tok.encode
    best = float("inf")
    cold = None
    all_ids: list[list[int]] = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        out = [encode(t, add_special_tokens=False).ids for t in texts]
        dt = time.perf_counter() - t0
        if cold is None:
            cold = dt  # the first pass: the tokenizer's word cache starts empty
        best = min(best, dt)
        all_ids = out

    h = hashlib.sha256()
    n_tokens = 0
    for ids in all_ids:
        a = array("i", ids)  # int32
        if sys.byteorder != "little":
            a.byteswap()
        h.update(a.tobytes())
        n_tokens += len(ids)

    print(json.dumps({
        "impl": "hf-tokenizers",
        "version": tokenizers.__version__,
        "texts": len(texts),
        "bytes": n_bytes,
        "tokens": n_tokens,
        "seconds": round(best, 6),
        "mb_per_s": round(n_bytes / 1e6 / best, 3),
        "cold_mb_per_s": round(n_bytes / 1e6 / cold, 3),
        "ids_sha256": h.hexdigest(),
    }))


if __name__ == "__main__":
    main()
