"""Train the byte-level reference decoder (`models:trained-lm`) on the Python standard library's
sources, and write its checkpoint and card:

    .venv/bin/python models/train_lm.py [--steps 400] [--seed 0] [--out models/checkpoints]

A few CPU-minutes on two cores. The data is every `*.py` file of this Python's standard
library (`sysconfig.get_paths()["stdlib"]`) without tests, site-packages, codec tables and files
over 256 KiB, sorted by path, read as bytes; every 20th file is held out (see
`models/trained_lm.py`, which the benchmarks and tests read the held-out text from). Training
draws random windows of the training files' bytes from a seeded generator, so the same seed,
steps and thread count give the same weights; AdamW, linear warm-up then cosine decay, gradient
clipping.

Writes `trained-lm.safetensors` (fp32 weights) and `trained-lm.json`: config, training settings
and seed, the data (Python version, file and byte counts, the held-out text's sha256), parameter
count, and the perplexity on `EVAL_WINDOWS` held-out windows, measured here after training.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.trained_lm import (  # noqa: E402
    CHECKPOINT, EXCLUDED_PARTS, FILE_SEPARATOR, HOLD_OUT_EVERY, MAX_FILE_BYTES, TextLM, TextLMConfig,
    corpus_bytes, corpus_files, held_out_bytes, held_out_digest, held_out_windows, parameter_count,
)

#: held-out windows of `context` positions the recorded perplexity is measured on
EVAL_WINDOWS = 64


def perplexity(model: TextLM, windows: torch.Tensor, batch: int = 16) -> float:
    """exp(mean next-byte negative log-likelihood) over every position of `windows` (n, T + 1)."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows.split(batch):
            logits = model(chunk[:, :-1])
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                   reduction="sum").item()
            count += chunk[:, 1:].numel()
    return math.exp(nll / count)


def learning_rate(step: int, steps: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=CHECKPOINT.parent)
    args = ap.parse_args()

    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = TextLMConfig()
    model = TextLM(cfg)
    train_files, held_files = corpus_files()
    train = torch.frombuffer(bytearray(corpus_bytes(train_files)), dtype=torch.uint8)
    print(f"{parameter_count(model):,} parameters; {len(train_files)} training files ({len(train):,} bytes), "
          f"{len(held_files)} held out ({len(held_out_bytes()):,} bytes)", flush=True)

    # Weight decay on the matrices only (not on norm gains).
    decayed = [p for n, p in model.named_parameters() if p.dim() >= 2]
    plain = [p for n, p in model.named_parameters() if p.dim() < 2]
    betas = (0.9, 0.95)
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": args.weight_decay},
                             {"params": plain, "weight_decay": 0.0}], lr=args.lr, betas=betas)
    data_rng = torch.Generator().manual_seed(args.seed)
    floor, clip = args.lr / 10, 1.0
    span = cfg.context + 1
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup, floor)
        starts = torch.randint(0, len(train) - span, (args.batch,), generator=data_rng)
        batch = torch.stack([train[s:s + span] for s in starts.tolist()]).long()
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    model.eval()

    windows = held_out_windows(EVAL_WINDOWS, cfg.context)
    ppl = perplexity(model, windows)
    print(f"held-out perplexity {ppl:.3f} over {windows[:, 1:].numel()} positions; trained in {train_s:.0f} s "
          f"({train_cpu_s / 60:.1f} CPU-minutes)")

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / CHECKPOINT.name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    card = {
        "model": "trained-lm",
        "config": asdict(cfg),
        "parameters": parameter_count(model),
        "checkpoint_bytes": weights.stat().st_size,
        "training": {
            "command": " ".join(["models/train_lm.py", *sys.argv[1:]]),
            "seed": args.seed, "steps": args.steps, "batch": args.batch, "context": cfg.context,
            "tokens": args.steps * args.batch * cfg.context,
            "optimizer": "AdamW", "lr": args.lr, "lr_floor": round(floor, 8), "warmup_steps": args.warmup,
            "schedule": "linear warm-up, cosine decay", "betas": list(betas), "weight_decay": args.weight_decay,
            "grad_clip": clip, "threads": args.threads, "seconds": round(train_s, 1),
            "cpu_seconds": round(train_cpu_s, 1),
            "torch": torch.__version__,
        },
        "data": {
            "source": "Python standard library *.py files (sysconfig.get_paths()['stdlib']), as bytes",
            "python": platform.python_version(),
            "excluded_path_parts": sorted(EXCLUDED_PARTS),
            "max_file_bytes": MAX_FILE_BYTES,
            "hold_out_every": HOLD_OUT_EVERY,
            "file_separator": FILE_SEPARATOR.hex(),
            "train_files": len(train_files), "train_bytes": len(train),
            "held_out_files": len(held_files), "held_out_bytes": len(held_out_bytes()),
            "held_out_sha256": held_out_digest(),
        },
        "held_out": {
            "windows": EVAL_WINDOWS, "length": cfg.context, "positions": windows[:, 1:].numel(),
            "perplexity": round(ppl, 4), "nll_nats": round(math.log(ppl), 5),
        },
    }
    (args.out / CHECKPOINT.with_suffix(".json").name).write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {weights} ({weights.stat().st_size:,} bytes) and its card")


if __name__ == "__main__":
    main()
