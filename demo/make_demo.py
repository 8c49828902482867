#!/usr/bin/env python3
"""Build the embedded demo of slearn: a fictional pharmacology handbook, its SFT and validation sets, and a
tiny Qwen2 chat model that has learned only part of the handbook.

    /opt/slearn-ref/bin/python demo/make_demo.py [--out DIR]

Writes (under demo/ unless --out):

    data/train.jsonl   the domain SFT set: every fact of the handbook, asked in its first phrasing
    data/eval.jsonl    the validation set: every fact again, asked in a second phrasing
    model/             config.json, generation_config.json, model.safetensors (F32),
                       tokenizer.json, tokenizer_config.json

The handbook is generated from a seed: fictional diseases, each with four attributes (the drug that treats
it, the organism that causes it, the organ it damages, the animal that spreads it). Half of the facts (two of
the four per disease) are "known": the model is pretrained, from scratch, on chat-formatted questions about
them in both phrasings. The other half never reach the model, so it answers those questions with a plausible
but (almost always) wrong guess. The self-learning loop then finds and teaches exactly those.

Everything runs on the CPU with one thread and fixed seeds: two runs write byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

# Single-threaded, reproducible tokenizer training and torch. Must be set before the imports.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

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

N_DISEASES = 80
N_KNOWN_PER_DISEASE = 2  # of the four attributes; so exactly half of the facts are known

ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pr", "qu", "r", "s",
          "st", "t", "tr", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u"]
CODAS = ["", "", "", "l", "n", "r", "s", "x", "m"]
SINGLE = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]

DISEASE_KINDS = ["fever", "syndrome", "blight", "palsy", "pox", "disease", "rash", "cough", "ague", "wasting"]
DISEASE_ENDINGS = ["ora", "ia", "is", "ine", "ar", "ode", "ey", "ane", "ula"]
DRUG_SUFFIXES = ["xil", "dine", "mab", "zole", "pril", "cort", "vir", "cin", "tane", "fen"]
ORGANISM_SUFFIXES = ["lia", "coccus", "monas", "spora", "bacter", "myces", "vibrio", "plasma"]
ORGANS = ["liver", "kidney", "lung", "heart", "spleen", "pancreas", "skin", "brain", "stomach", "colon",
          "bladder", "retina", "thyroid", "bone marrow"]
ANIMALS = ["mosquito", "tick", "rat", "bat", "sandfly", "goat", "pigeon", "snail", "flea", "louse",
           "boar", "heron", "tsetse fly", "ferret"]

N_DRUGS = 24
N_ORGANISMS = 24

# Relation -> (train phrasing, eval phrasing). Both phrasings of a known fact are in the pretraining data.
RELATIONS = {
    "drug": ("Which drug treats {d}?", "What is the standard drug for {d}?"),
    "organism": ("Which organism causes {d}?", "What is the causative organism of {d}?"),
    "organ": ("Which organ is damaged by {d}?", "What organ is chiefly affected by {d}?"),
    "vector": ("Which animal spreads {d}?", "What animal carries {d}?"),
}
RELATION_NAMES = list(RELATIONS)


def syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def make_names(rng: random.Random, n: int, suffixes: list[str], taken: set[str]) -> list[str]:
    """Names like Tarnexil: a syllable, a consonant and a vowel, a suffix."""
    out: list[str] = []
    while len(out) < n:
        name = (syllable(rng) + rng.choice(SINGLE) + rng.choice(VOWELS) + rng.choice(suffixes)).capitalize()
        if name.lower() in taken or re.search(r"(.)\1", name.lower()):
            continue
        taken.add(name.lower())
        out.append(name)
    return out


def build_handbook(seed: int) -> dict:
    rng = random.Random(seed)
    taken: set[str] = set()
    diseases: list[str] = []
    while len(diseases) < N_DISEASES:
        stem = (syllable(rng) + rng.choice(SINGLE) + rng.choice(DISEASE_ENDINGS)).capitalize()
        if stem.lower() in taken or re.search(r"(.)\1", stem.lower()):
            continue
        taken.add(stem.lower())
        diseases.append(f"{stem} {rng.choice(DISEASE_KINDS)}")
    drugs = make_names(rng, N_DRUGS, DRUG_SUFFIXES, taken)
    organisms = make_names(rng, N_ORGANISMS, ORGANISM_SUFFIXES, taken)
    pools = {"drug": drugs, "organism": organisms, "organ": ORGANS, "vector": ANIMALS}

    # Which two attributes of each disease are known: every pair of relations equally often.
    pairs = [(a, b) for i, a in enumerate(RELATION_NAMES) for b in RELATION_NAMES[i + 1:]]
    known_sets = [set(pairs[i % len(pairs)]) for i in range(len(diseases))]
    rng.shuffle(known_sets)
    facts = [{"disease": d, "relation": rel, "answer": None, "known": rel in known_sets[i]}
             for i, d in enumerate(diseases) for rel in RELATION_NAMES]
    # Answers: the known facts of a relation use every value of its pool at least once (so every answer's
    # tokens are trained); the rest are drawn uniformly.
    for rel in RELATION_NAMES:
        pool = pools[rel]
        for want_known in (True, False):
            group = [f for f in facts if f["relation"] == rel and f["known"] == want_known]
            if want_known:
                assert len(group) >= len(pool), (rel, len(group), len(pool))
                values = list(pool) + [rng.choice(pool) for _ in range(len(group) - len(pool))]
                rng.shuffle(values)
            else:
                values = [rng.choice(pool) for _ in group]
            for f, v in zip(group, values):
                f["answer"] = v
    for i, f in enumerate(facts):
        f["id"] = f"f{i:03d}"
    return {"diseases": diseases, "pools": pools, "facts": facts}


def question(fact: dict, phrasing: int) -> str:
    return RELATIONS[fact["relation"]][phrasing].format(d=fact["disease"])


# ----------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE as tests/fixtures/make_tokenizers.py builds bytelevel-tiny
# ----------------------------------------------------------------------------------------------

# The pre-tokenizer split pattern of Qwen2/Qwen2.5/Qwen3.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1024  # the BPE stops earlier when the corpus has no more pairs to merge


def tokenizer_corpus(handbook: dict) -> list[str]:
    texts = [SYSTEM_PROMPT]
    for f in handbook["facts"]:
        for p in (0, 1):
            texts.append(question(f, p) + "\n" + f["answer"])
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
        min_frequency=2,
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
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
PRETRAIN = dict(epochs=160, batch_size=32, lr=3e-3, min_lr_ratio=0.05, warmup_steps=50, weight_decay=0.01,
                prompt_loss_weight=0.0, unknown_mode="none", early_epochs=0)
if os.environ.get("DEMO_EXP"):  # development only
    _exp = json.loads(os.environ["DEMO_EXP"])
    MODEL.update(_exp.get("model", {}))
    PRETRAIN.update(_exp.get("pretrain", {}))


def build_model(tok: Tokenizer) -> Qwen2ForCausalLM:
    eos = tok.token_to_id("<|im_end|>")
    pad = tok.token_to_id("<|endoftext|>")
    cfg = Qwen2Config(vocab_size=tok.get_vocab_size(), bos_token_id=None, eos_token_id=eos, pad_token_id=None,
                      use_sliding_window=False, sliding_window=None, attention_dropout=0.0, **MODEL)
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False)
    return model


STATEMENTS = {
    "drug": "{d} is treated with {a}.",
    "organism": "{d} is caused by {a}.",
    "organ": "{d} damages the {a}.",
    "vector": "{d} is spread by the {a}.",
}


def pretrain_examples(handbook: dict, tok: Tokenizer):
    """(examples of every epoch, examples of the early epochs only)."""
    mode = PRETRAIN["unknown_mode"]
    every, early = [], []
    eot = tok.token_to_id("<|endoftext|>")
    for f in handbook["facts"]:
        if f["known"]:
            for p in (0, 1):
                every.append(encode_example(tok, question(f, p), f["answer"]))
        elif mode == "early":
            for p in (0, 1):
                early.append(encode_example(tok, question(f, p), f["answer"]))
        if mode == "statements" or (mode == "statements_unknown" and not f["known"]):
            ids = tok.encode(STATEMENTS[f["relation"]].format(d=f["disease"], a=f["answer"]),
                             add_special_tokens=False).ids + [eot]
            every.append((ids, 0))
    return every, early


def collate(batch: list[tuple[list[int], int]], pad: int, prompt_w: float):
    n = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), n), pad, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    w = torch.zeros((len(batch), n), dtype=torch.float32)
    for i, (ids, plen) in enumerate(batch):
        x[i, :len(ids)] = torch.tensor(ids)
        att[i, :len(ids)] = 1
        # weight of the token at position t+1 (predicted from position t)
        w[i, plen:len(ids)] = 1.0
        if prompt_w > 0:
            w[i, 1:plen] = prompt_w
    return x, att, w


def lm_loss(model, x, att, w):
    logits = model(input_ids=x, attention_mask=att, use_cache=False).logits[:, :-1].float()
    tgt = x[:, 1:]
    ww = w[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                           reduction="none").view_as(ww)
    return (ce * ww).sum() / ww.sum()


def pretrain(model, examples, tok: Tokenizer, log=print) -> None:
    cfg = PRETRAIN
    pad = tok.token_to_id("<|endoftext|>")
    rng = random.Random(SEED + 1)
    total = sum(math.ceil((len(examples[0]) + (len(examples[1]) if e < cfg["early_epochs"] else 0))
                          / cfg["batch_size"]) for e in range(cfg["epochs"]))
    decay, no_decay = [], []
    for n, p in model.named_parameters():
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
    every, early = examples
    for epoch in range(cfg["epochs"]):
        examples = every + (early if epoch < cfg["early_epochs"] else [])
        order = list(range(len(examples)))
        rng.shuffle(order)
        tot, cnt = 0.0, 0
        for b in range(0, len(order), cfg["batch_size"]):
            batch = [examples[i] for i in order[b:b + cfg["batch_size"]]]
            x, att, w = collate(batch, pad, cfg["prompt_loss_weight"])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = lm_loss(model, x, att, w)
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
    facts = hb["facts"]
    train_rows = [{"id": f["id"], "question": question(f, 0), "answer": f["answer"]} for f in facts]
    eval_rows = [{"id": f["id"] + "-b", "question": question(f, 1), "answer": f["answer"]} for f in facts]
    data_dir = args.out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(data_dir / "train.jsonl", train_rows)
    write_jsonl(data_dir / "eval.jsonl", eval_rows)
    n_known = sum(f["known"] for f in facts)
    print(f"handbook: {len(hb['diseases'])} diseases, {len(facts)} facts, {n_known} known to the model")

    tok = build_tokenizer(tokenizer_corpus(hb))
    ids = [tok.token_to_id(t) for t in QWEN_SPECIALS]
    V = tok.get_vocab_size()
    assert ids == list(range(V - 3, V)), ids
    print(f"tokenizer: vocab {V}")

    model = build_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    examples = pretrain_examples(hb, tok)
    print(f"model: {n_params} parameters; pretraining on {len(examples[0])} + {len(examples[1])} examples")
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
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        answers = greedy_answers(reloaded, tok, [r["question"] for r in rows])
        ok = [judge_correct(r["answer"], a) for r, a in zip(rows, answers)]
        k = [o for o, f in zip(ok, facts) if f["known"]]
        u = [o for o, f in zip(ok, facts) if not f["known"]]
        print(f"base accuracy on {name}: {sum(ok)}/{len(ok)} = {100 * sum(ok) / len(ok):.1f}% "
              f"(known facts {sum(k)}/{len(k)}, unknown facts {sum(u)}/{len(u)})")
    print(f"done in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
