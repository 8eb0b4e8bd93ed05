"""Train MemLens' built-in demo model: a tiny Llama-shaped causal LM with real trained weights.

Why a trained model: random weights make attention maps noise and quality figures meaningless.
Nothing can be downloaded here, so the corpus is text every CPython install ships and that may be
redistributed under the PSF licence: the docstrings of the standard library (modules, classes,
functions; ``test`` packages excluded) plus the language-reference topics in ``pydoc_data``.

Recipe (deterministic for a given CPython version and torch build):
  * corpus: docstrings in sorted file order, separated by the end-of-text token; every 50th document
    is held out for evaluation;
  * tokenizer: byte-level BPE (Hugging Face ``tokenizers``), vocabulary 2048;
  * model: ``LlamaForCausalLM`` with 6 layers, hidden 192, 6 heads (head_dim 32), 2 KV heads
    (grouped-query attention), intermediate 448, tied embeddings, max positions 512;
  * training: AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.1), 60 warm-up steps then cosine
    decay, batch 16 x 256 tokens, gradient clipping 1.0, seed 0, fp32, on the CPU.

Usage: ``python tools/train_demo_model.py --out resources/models/memlens-demo-lm [--steps N]``.
The script writes config, safetensors weights, tokenizer files and ``training.json`` (corpus size,
steps, wall time, held-out loss and perplexity) into ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

import torch

EOT = "<|endoftext|>"


def stdlib_corpus() -> list[str]:
    """Docstrings of the standard library, in sorted file order, plus pydoc's topic texts."""
    std = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "site-packages", "idle_test", "__pycache__", "lib2to3", "pydoc_data"}
    docs: list[str] = []
    for root, dirs, files in os.walk(std):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(root, name).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= 40:
                        docs.append(doc.strip())
    try:
        from pydoc_data.topics import topics

        docs.extend(topics[k].strip() for k in sorted(topics))
    except ImportError:  # pragma: no cover - pydoc_data is part of every CPython build
        pass
    return docs


def train_tokenizer(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    docs = stdlib_corpus()
    eval_docs = docs[::50]  # every 50th document is held out
    train_docs = [d for i, d in enumerate(docs) if i % 50]
    tok = train_tokenizer(train_docs, args.vocab)
    eot = tok.token_to_id(EOT)

    def encode(ds: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for enc in tok.encode_batch(ds):
            ids.extend(enc.ids)
            ids.append(eot)
        return torch.tensor(ids, dtype=torch.long)

    train_ids, eval_ids = encode(train_docs), encode(eval_docs)
    print(f"corpus: {len(docs)} documents, {sum(map(len, docs))} characters, "
          f"{train_ids.numel()} train / {eval_ids.numel()} eval tokens", flush=True)

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=192, intermediate_size=448, num_hidden_layers=6,
        num_attention_heads=6, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3, betas=(0.9, 0.95),
    )
    warmup = 60

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(0)
    span = args.seq + 1

    def evaluate() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for start in range(0, eval_ids.numel() - span, args.seq):
                chunk = eval_ids[start:start + span].unsqueeze(0)
                losses.append(_loss(model, chunk).item())
        model.train()
        return sum(losses) / len(losses)

    model.train()
    t_train = time.perf_counter()
    for step in range(args.steps):
        starts = torch.randint(0, train_ids.numel() - span, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s:s + span] for s in starts.tolist()])
        loss = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t_train
            print(f"step {step:4d} loss {loss.item():.3f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{el:.0f}s", flush=True)
    train_s = time.perf_counter() - t_train
    eval_loss = evaluate()
    print(f"held-out loss {eval_loss:.3f} perplexity {math.exp(eval_loss):.1f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.config.dtype = "float32"
    model.save_pretrained(args.out, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                   pad_token=EOT, unk_token=EOT, model_max_length=512)
    fast.save_pretrained(args.out)
    record = {
        "corpus": "CPython standard-library docstrings (test packages excluded) + pydoc_data topics",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "documents": len(docs),
        "characters": sum(map(len, docs)),
        "train_tokens": int(train_ids.numel()),
        "eval_tokens": int(eval_ids.numel()),
        "parameters": n_params,
        "steps": args.steps,
        "batch": args.batch,
        "seq": args.seq,
        "seed": 0,
        "threads": args.threads,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "eval_loss": round(eval_loss, 4),
        "eval_perplexity": round(math.exp(eval_loss), 2),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


def _loss(model, chunk: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=chunk[:, :-1]).logits
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))


if __name__ == "__main__":
    raise SystemExit(main())
