#!/usr/bin/env python3
"""Build the embedded demo of slearn: a fictional drug-naming handbook, its SFT and validation sets, and a
tiny Qwen2 chat model that has learned only half of the handbook.

    /opt/slearn-ref/bin/python demo/make_demo.py [--out DIR]

Writes (under demo/ unless --out; see demo/README.md):

    data/train.jsonl   the domain SFT set (320 questions): "Which drug class does X belong to?"
    data/eval.jsonl    the validation set (200 questions about other drugs): "What kind of drug is X?"
    model/             config.json, generation_config.json, model.safetensors (F32),
                       tokenizer.json, tokenizer_config.json

The domain: a drug's class is told by the naming stem its name ends with (as real stems such as -vir or
-mab do), with ten classes and two stems each. The model is pretrained from scratch on the stems of one half
(one stem per class); of the other half it has seen drug names but was never told a class, so it answers
those questions with a guess. Answering the SFT set, judging and fine-tuning LoRA on the wrong answers teaches
the missing stems, which the validation set (other drug names, another phrasing) measures.

Deterministic: fixed seeds, one CPU thread; two runs write byte-identical files (a few minutes on a laptop).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import time
from pathlib import Path

# Single-threaded, reproducible tokenizer training and torch; never the GPU. Set before the imports.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

HERE = Path(__file__).resolve().parent

SEED = 20261121
SYSTEM_PROMPT = "You are a concise pharmacology assistant."

# ----------------------------------------------------------------------------------------------
# The handbook
# ----------------------------------------------------------------------------------------------

# Drug classes and their naming stems (fictional, in the spirit of the real USAN/INN stems such as -vir,
# -azole or -mab): a drug's class is told by the stem its name ends with. Two stems per class.
STEMS = {
    "antiviral": ["virex", "navudin"],
    "antifungal": ["conazil", "fungorin"],
    "analgesic": ["dolmin", "galtane"],
    "antibiotic": ["mycelin", "bactrol"],
    "anticoagulant": ["parinox", "thrombex"],
    "antiemetic": ["setrilo", "meprin"],
    "antihistamine": ["tadinol", "histamet"],
    "sedative": ["zepamil", "somnadex"],
    "diuretic": ["semidor", "ruzetil"],
    "bronchodilator": ["terolin", "brospan"],
}
CLASSES = list(STEMS)

# Name prefixes: two syllables ending in l, x or k ("Prinel" + "virex" = "Prinelvirex"). Ending the prefix
# with a consonant that rarely starts a cluster keeps the BPE from merging across the prefix/stem boundary,
# so every stem is one token in every name.
ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pr", "qu", "r", "s",
          "st", "t", "tr", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u"]
SINGLE = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
FINALS = ["l", "x", "k"]
FORMS = ["tablets", "capsules", "syrup", "injection", "cream", "drops", "inhaler", "patches"]
DOSES = ["1", "2", "5", "10", "20", "25", "40", "50", "100", "200", "250", "500"]

N_PRETRAIN_PER_STEM = 24  # drugs of each known stem whose class the pretraining teaches
N_UNSURE_PER_STEM = 12    # drugs of each unknown stem asked in the pretraining with a soft target (below)
N_CATALOG_PER_STEM = 12   # drugs of every stem listed in the pretraining catalogue (no class given)
N_TRAIN_PER_STEM = 16     # drugs of every stem in the domain SFT set
N_EVAL_PER_STEM = 10      # drugs of every stem in the validation set

# The train phrasing and the validation phrasing; the pretraining uses both for the known stems.
PHRASINGS = ("Which drug class does {x} belong to?", "What kind of drug is {x}?")


def make_names(rng: random.Random, n: int, stem: str, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        prefix = rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(SINGLE) + rng.choice(VOWELS) + rng.choice(FINALS)
        name = (prefix + stem).capitalize()
        if name in taken:
            continue
        taken.add(name)
        out.append(name)
    return out


def build_handbook(seed: int) -> dict:
    rng = random.Random(seed)
    # One stem of each class is known to the model; the other is not.
    known = {}
    for cls in CLASSES:
        k = rng.randrange(2)
        known[STEMS[cls][k]] = True
        known[STEMS[cls][1 - k]] = False
    taken: set[str] = set()
    drugs = {"pretrain": [], "catalog": [], "train": [], "eval": []}
    for cls in CLASSES:
        for stem in STEMS[cls]:
            n_pre = N_PRETRAIN_PER_STEM if known[stem] else N_UNSURE_PER_STEM
            for split, n in (("pretrain", n_pre),
                             ("catalog", N_CATALOG_PER_STEM), ("train", N_TRAIN_PER_STEM),
                             ("eval", N_EVAL_PER_STEM)):
                for name in make_names(rng, n, stem, taken):
                    drugs[split].append({"name": name, "stem": stem, "class": cls, "known": known[stem]})
    for split in ("train", "eval"):
        rng.shuffle(drugs[split])
    # The catalogue gives each drug's strength and form, which (like real stems do) depend on the stem but say
    # nothing of the class: every stem has its own pair, so the model learns to tell all stems apart.
    pairs = [(dose, form) for dose in DOSES for form in FORMS]
    rng.shuffle(pairs)
    profile = {stem: pairs[i] for i, stem in enumerate(known)}
    catalog = [f"{d['name']} {profile[d['stem']][0]} mg {profile[d['stem']][1]}" for d in drugs["catalog"]]
    return {"known": known, "drugs": drugs, "catalog": catalog}


def question(drug: dict, phrasing: int) -> str:
    return PHRASINGS[phrasing].format(x=drug["name"])


# ----------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE as tests/fixtures/make_tokenizers.py builds bytelevel-tiny
# ----------------------------------------------------------------------------------------------

# The pre-tokenizer split pattern of Qwen2/Qwen2.5/Qwen3.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1024  # an upper bound: with MIN_FREQUENCY the merges run out first (about 500 tokens)
MIN_FREQUENCY = 30  # merge only pairs seen this often: words of the handbook and the naming stems, not names


def tokenizer_corpus(handbook: dict) -> list[str]:
    # The text as the model sees it: the chat scaffolding once per example, the catalogue, the questions.
    n = sum(len(handbook["drugs"][s]) for s in ("pretrain", "train", "eval"))
    texts = [f"system\n{SYSTEM_PROMPT}\nuser\nassistant\n"] * n + handbook["catalog"]
    for split in ("pretrain", "train", "eval"):
        for d in handbook["drugs"][split]:
            for p in (0, 1):
                texts.append(question(d, p) + "\n" + d["class"])
    return texts


def build_tokenizer(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(QWEN_SPECIALS),
        min_frequency=MIN_FREQUENCY,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens([
        AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for t in QWEN_SPECIALS
    ])
    tj = json.loads(tok.to_str())
    tj["model"]["continuing_subword_prefix"] = ""
    tj["model"]["end_of_word_suffix"] = ""
    return Tokenizer.from_str(json.dumps(tj, ensure_ascii=False))


def tokenizer_config(tok: Tokenizer) -> dict:
    added = {}
    for t in QWEN_SPECIALS:
        added[str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
    chat_template = (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 128,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# ----------------------------------------------------------------------------------------------
# Chat format (as slearn renders ChatML) and examples
# ----------------------------------------------------------------------------------------------

def chat_prompt(q: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")


def encode_example(tok: Tokenizer, q: str, a: str) -> tuple[list[int], int]:
    """Prompt and answer tokenized separately, as slearn does; returns ids and the prompt length."""
    p = tok.encode(chat_prompt(q), add_special_tokens=False).ids
    ans = tok.encode(a, add_special_tokens=False).ids + [tok.token_to_id("<|im_end|>")]
    return p + ans, len(p)


# ----------------------------------------------------------------------------------------------
# The rule judge (what slearn's `normalized` rule does): the answer contains the reference as a whole-word
# span, case-insensitive, punctuation ignored.
# ----------------------------------------------------------------------------------------------

def _norm(s: str) -> str:
    s = re.sub(r"[^\w\s]", " ", s.lower())
    return " ".join(s.split())


def judge_correct(reference: str, answer: str) -> bool:
    return f" {_norm(reference)} " in f" {_norm(answer)} "


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

MODEL = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
# Full training from scratch: AdamW, linear warmup then cosine decay to min_lr_ratio * lr.
PRETRAIN = dict(epochs=40, batch_size=32, lr=3e-3, min_lr_ratio=0.05, warmup_steps=50, weight_decay=0.01)


def build_model(tok: Tokenizer) -> Qwen2ForCausalLM:
    eos = tok.token_to_id("<|im_end|>")
    pad = tok.token_to_id("<|endoftext|>")
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), bos_token_id=None, eos_token_id=eos, pad_token_id=None,
                      use_sliding_window=False, sliding_window=None, attention_dropout=0.0, **MODEL)
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False)
    return model


def pretrain_examples(handbook: dict, tok: Tokenizer) -> list[tuple[list[int], int, bool]]:
    """(ids, prompt length, soft). Chat Q/A on the pretraining drugs in both phrasings: the known stems with
    their class; the unknown stems with a soft target, every class equally likely, so the model learns that
    it cannot tell their class (it guesses, with little confidence) rather than tying them to a known stem.
    And the catalogue lines as plain text, which teach every stem's name and strength but no class."""
    rng = random.Random(SEED + 2)
    out = []
    for d in handbook["drugs"]["pretrain"]:
        for p in (0, 1):
            # For a soft example the answer token in the input is a placeholder, never a target.
            answer = d["class"] if d["known"] else rng.choice(CLASSES)
            ids, plen = encode_example(tok, question(d, p), answer)
            out.append((ids, plen, not d["known"]))
    eot = tok.token_to_id("<|endoftext|>")
    for line in handbook["catalog"]:
        out.append((tok.encode(line, add_special_tokens=False).ids + [eot], 0, False))
    return out


def collate(batch: list[tuple[list[int], int, bool]], pad: int):
    n = max(len(ids) for ids, _, _ in batch)
    x = torch.full((len(batch), n), pad, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    w = torch.zeros((len(batch), n), dtype=torch.float32)
    soft = torch.zeros((len(batch), n), dtype=torch.bool)
    for i, (ids, plen, is_soft) in enumerate(batch):
        x[i, :len(ids)] = torch.tensor(ids)
        att[i, :len(ids)] = 1
        w[i, plen:len(ids)] = 1.0  # the loss is on the answer and its end token (position t: token t)
        soft[i, plen] = is_soft
    return x, att, w, soft


def lm_loss(model, x, att, w, soft, class_ids: list[int]):
    """Mean cross-entropy over the weighted tokens; at a soft position, the mean over the classes (the
    cross-entropy against the uniform distribution on them)."""
    logits = model(input_ids=x, attention_mask=att, use_cache=False).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1)
    tgt = x[:, 1:]
    ww = w[:, 1:]
    nll = -logp.gather(-1, tgt[..., None])[..., 0]
    nll = torch.where(soft[:, 1:], -logp[..., class_ids].mean(-1), nll)
    return (nll * ww).sum() / ww.sum()


def pretrain(model, examples, tok: Tokenizer, log=print) -> None:
    cfg = PRETRAIN
    pad = tok.token_to_id("<|endoftext|>")
    class_ids = [tok.token_to_id(c) for c in CLASSES]
    assert all(i is not None for i in class_ids), "every class must be one token"
    rng = random.Random(SEED + 1)
    total = math.ceil(len(examples) / cfg["batch_size"]) * cfg["epochs"]
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg["warmup_steps"]:
            return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
        t = (step - cfg["warmup_steps"]) / max(1, total - cfg["warmup_steps"])
        m = cfg["min_lr_ratio"]
        return cfg["lr"] * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    step = 0
    t0 = time.time()
    for epoch in range(cfg["epochs"]):
        order = list(range(len(examples)))
        rng.shuffle(order)
        tot, cnt = 0.0, 0
        for b in range(0, len(order), cfg["batch_size"]):
            batch = [examples[i] for i in order[b:b + cfg["batch_size"]]]
            x, att, w, soft = collate(batch, pad)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = lm_loss(model, x, att, w, soft, class_ids)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            tot += loss.item()
            cnt += 1
        if epoch % 20 == 0 or epoch == cfg["epochs"] - 1:
            log(f"  epoch {epoch:4d} loss {tot / cnt:.4f} lr {lr_at(step):.2e} ({time.time() - t0:.0f}s)")
    model.eval()


@torch.no_grad()
def greedy_answers(model, tok: Tokenizer, questions: list[str], max_new: int = 16, bs: int = 64) -> list[str]:
    """Greedy chat answers, left-padded batches (for the recipe's own accuracy check)."""
    eos = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
    pad = tok.token_to_id("<|endoftext|>")
    out: list[str] = []
    for b in range(0, len(questions), bs):
        prompts = [tok.encode(chat_prompt(q), add_special_tokens=False).ids for q in questions[b:b + bs]]
        n = max(len(p) for p in prompts)
        x = torch.full((len(prompts), n), pad, dtype=torch.long)
        att = torch.zeros((len(prompts), n), dtype=torch.long)
        for i, p in enumerate(prompts):
            x[i, n - len(p):] = torch.tensor(p)
            att[i, n - len(p):] = 1
        gen = [[] for _ in prompts]
        done = [False] * len(prompts)
        for _ in range(max_new):
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=x, attention_mask=att, position_ids=pos, use_cache=False).logits[:, -1]
            nxt = logits.argmax(-1)
            for i in range(len(prompts)):
                if not done[i]:
                    t = int(nxt[i])
                    if t in eos:
                        done[i] = True
                    else:
                        gen[i].append(t)
            if all(done):
                break
            x = torch.cat([x, nxt[:, None]], 1)
            att = torch.cat([att, torch.ones((len(prompts), 1), dtype=torch.long)], 1)
        out += [tok.decode(g, skip_special_tokens=True) for g in gen]
    return out


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def dump_line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(dump_line(r) + "\n" for r in rows), encoding="utf-8")


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output root (default: demo/)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    hb = build_handbook(SEED)
    train_drugs, eval_drugs = hb["drugs"]["train"], hb["drugs"]["eval"]
    train_rows = [{"id": f"t{i:03d}", "question": question(d, 0), "answer": d["class"]}
                  for i, d in enumerate(train_drugs)]
    eval_rows = [{"id": f"v{i:03d}", "question": question(d, 1), "answer": d["class"]}
                 for i, d in enumerate(eval_drugs)]
    data_dir = args.out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(data_dir / "train.jsonl", train_rows)
    write_jsonl(data_dir / "eval.jsonl", eval_rows)
    print(f"handbook: {len(CLASSES)} classes, {len(hb['known'])} stems ({sum(hb['known'].values())} known); "
          f"train {len(train_rows)}, eval {len(eval_rows)}")

    tok = build_tokenizer(tokenizer_corpus(hb))
    ids = [tok.token_to_id(t) for t in QWEN_SPECIALS]
    V = tok.get_vocab_size()
    assert ids == list(range(V - 3, V)), ids
    print(f"tokenizer: vocab {V}")

    model = build_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    examples = pretrain_examples(hb, tok)
    print(f"model: {n_params} parameters; pretraining on {len(examples)} examples")
    pretrain(model, examples, tok)

    mdir = args.out / "model"
    if mdir.exists():
        shutil.rmtree(mdir)
    mdir.mkdir(parents=True)
    model.save_pretrained(mdir, safe_serialization=True)
    s = tok.to_str(pretty=True)
    assert Tokenizer.from_str(s).to_str(pretty=True) == s
    (mdir / "tokenizer.json").write_text(s + "\n", encoding="utf-8")
    write_json(mdir / "tokenizer_config.json", tokenizer_config(tok))

    # The recipe's own check of the saved model: greedy chat answers, rule-judged.
    reloaded = Qwen2ForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
    for name, rows, drugs in (("train", train_rows, train_drugs), ("eval", eval_rows, eval_drugs)):
        answers = greedy_answers(reloaded, tok, [r["question"] for r in rows])
        ok = [judge_correct(r["answer"], a) for r, a in zip(rows, answers)]
        k = [o for o, d in zip(ok, drugs) if d["known"]]
        u = [o for o, d in zip(ok, drugs) if not d["known"]]
        print(f"base accuracy on {name}: {sum(ok)}/{len(ok)} = {100 * sum(ok) / len(ok):.1f}% "
              f"(known stems {sum(k)}/{len(k)}, unknown stems {sum(u)}/{len(u)})")
    print(f"done in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
