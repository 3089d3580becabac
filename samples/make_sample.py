# Corpus: Shakespeare's Sonnets 1, 2, 12, 18, 29, 30, 55, 60, 73, 106, 116, 130 and Lincoln's Gettysburg Address (public domain).
"""Train a tiny character-level GPT-2 on samples/corpus.txt and save it.

Run from the repository root:

    python samples/make_sample.py

Output (samples/shakespeare-char/):
    model.safetensors   weights (lm_head is tied to the token embedding, so
                        only transformer.wte.weight is stored)
    config.json         the GPT2Config
    vocab.json          {char: id}, ids follow the sorted unique characters
    tokenizer.json      a `tokenizers` WordLevel tokenizer over single chars

Training is deterministic: fixed seed, fixed step count, 2 CPU threads.
It takes about a minute on a laptop-class CPU. Nothing is pickled; the
optimizer state is not saved.
"""

import json
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.txt"
OUT_DIR = HERE / "shakespeare-char"

# Training hyper-parameters.
SEED = 0
NUM_THREADS = 2
BLOCK = 64          # context length == n_positions == window length
BATCH = 32          # random 64-char windows per step
STEPS = 1500        # fixed, so the run is reproducible (~50 s on 2 threads)
LR = 3e-3           # peak AdamW learning rate
LR_MIN = 3e-4       # cosine-decayed to this by the last step
WARMUP = 50         # linear warm-up steps
LOG_EVERY = 100

PROMPT = "Shall I compare thee"
SAMPLE_CHARS = 100


def build_vocab(text):
    """Sorted unique characters -> {char: id}."""
    chars = sorted(set(text))
    return {c: i for i, c in enumerate(chars)}


def build_tokenizer(vocab):
    """A `tokenizers` Tokenizer mapping each character to its vocab id.

    Split(pattern="", behavior="isolated") cuts the input into single
    characters (whitespace and newlines included), WordLevel looks each one
    up, and the Fuse decoder joins tokens back without inserting spaces.
    There is no unknown token: characters outside the corpus raise an error.
    """
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def make_config(vocab_size):
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=BLOCK,
        n_embd=48,
        n_layer=2,
        n_head=3,
        activation_function="gelu_new",
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # The GPT-2 defaults (50256) lie outside this tiny vocabulary.
        bos_token_id=None,
        eos_token_id=None,
    )


def lr_at(step):
    """Linear warm-up, then cosine decay from LR to LR_MIN."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - 1 - WARMUP)
    return LR_MIN + 0.5 * (LR - LR_MIN) * (1 + math.cos(math.pi * progress))


def train(model, data, generator):
    """Train on random BLOCK-char windows of `data` (a 1-D LongTensor)."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    start = time.time()
    running = 0.0
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, len(data) - BLOCK + 1, (BATCH,), generator=generator)
        batch = torch.stack([data[s:s + BLOCK] for s in starts])
        # GPT2LMHeadModel shifts the labels internally (predict char t+1 from <= t).
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        running += loss.item()
        if step == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}")
        if (step + 1) % LOG_EVERY == 0:
            print(f"step {step + 1:5d}  loss {running / LOG_EVERY:.4f}  "
                  f"(mean of last {LOG_EVERY})  lr {lr_at(step):.2e}  {time.time() - start:5.1f}s")
            running = 0.0
    return time.time() - start


@torch.no_grad()
def full_corpus_loss(model, data):
    """Mean next-char loss over consecutive BLOCK-char chunks of the corpus."""
    model.eval()
    n = (len(data) // BLOCK) * BLOCK
    chunks = data[:n].view(-1, BLOCK)
    return model(input_ids=chunks, labels=chunks).loss.item()


@torch.no_grad()
def greedy(model, tok, prompt, n_chars):
    """Greedy continuation; the context is cropped to the last BLOCK chars."""
    model.eval()
    ids = tok.encode(prompt).ids
    for _ in range(n_chars):
        ctx = torch.tensor([ids[-BLOCK:]])
        ids.append(int(model(input_ids=ctx).logits[0, -1].argmax()))
    return tok.decode(ids[len(tok.encode(prompt).ids):])


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(NUM_THREADS)

    text = CORPUS.read_text(encoding="ascii")
    vocab = build_vocab(text)
    tok = build_tokenizer(vocab)

    # The tokenizer must agree with the plain per-character lookup.
    probe = "Shall I compare"
    assert tok.encode(probe).ids == [vocab[c] for c in probe]
    assert tok.decode(tok.encode(text).ids) == text

    data = torch.tensor([vocab[c] for c in text], dtype=torch.long)
    print(f"corpus: {len(text)} chars, vocab: {len(vocab)} chars")

    model = GPT2LMHeadModel(make_config(len(vocab)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")

    gen = torch.Generator().manual_seed(SEED)
    seconds = train(model, data, gen)
    print(f"trained {STEPS} steps in {seconds:.1f}s")
    print(f"full-corpus loss: {full_corpus_loss(model, data):.4f}")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT_DIR, safe_serialization=True)
    (OUT_DIR / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=True, indent=1) + "\n")
    tok.save(str(OUT_DIR / "tokenizer.json"))

    # Reload the saved tokenizer and check it round-trips.
    tok2 = Tokenizer.from_file(str(OUT_DIR / "tokenizer.json"))
    assert tok2.encode(probe).ids == [vocab[c] for c in probe]
    assert tok2.decode(tok2.encode(probe).ids) == probe

    sample = greedy(model, tok2, PROMPT, SAMPLE_CHARS)
    print(f"\ngreedy sample ({SAMPLE_CHARS} chars after {PROMPT!r}):")
    print(PROMPT + sample)


if __name__ == "__main__":
    main()
