"""Probe: one forward + backward of a few decoder layers of Llama-3.1-8B's shape over Spider-length
micro-batches, padded (attention_mask) against padding-free (one joined row, position_ids restarting
per row, as TRL's collator makes with train.padding_free), under sdpa and flex_attention.

    python bench/padding_free_attention.py                  # a CUDA GPU: ~2 min on an H200
    python bench/padding_free_attention.py --layers 2 --hidden 64 --intermediate 128 --device cpu --modes sdpa:pad sdpa:free

Random bf16 weights, frozen; the input embeddings carry the gradient, so every layer keeps what it
keeps for backward under LoRA (no 4-bit dequantization, no LM head: the attention's share shows).
Rows are drawn uniformly from 300-900 tokens (seeded). Prints per micro-batch: the first call (with
flex_attention: its compilation) and the second, and the second's memory peak above the model.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from transformers import LlamaConfig, LlamaModel


def decoder(args, attention: str) -> LlamaModel:
    config = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=1000, attn_implementation=attention,
    )
    model = LlamaModel(config).to(args.device, torch.bfloat16)
    model.requires_grad_(False)
    return model.train()


def micro_batch(lengths: list[int], padding_free: bool, device) -> dict:
    """Token ids (random) and the mask inputs of one micro-batch: a padded (rows, longest) batch with
    its attention_mask, or one joined row with position_ids restarting at each row (no mask)."""
    if padding_free:
        ids = torch.randint(0, 1000, (1, sum(lengths)), device=device)
        return {"ids": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths])[None].to(device)}
    ids = torch.randint(0, 1000, (len(lengths), max(lengths)), device=device)
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long().to(device)
    return {"ids": ids, "attention_mask": mask}


def step(model: LlamaModel, batch: dict) -> tuple[float, float]:
    """(seconds, GB of memory peak above what was allocated before) of one forward + backward."""
    embeds = model.embed_tokens(batch["ids"]).detach().requires_grad_(True)
    masks = {key: value for key, value in batch.items() if key != "ids"}
    cuda = torch.device(model.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    started = time.perf_counter()
    hidden = model(inputs_embeds=embeds, use_cache=False, **masks).last_hidden_state
    hidden.float().square().mean().backward()
    if cuda:
        torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 1e9 if cuda else 0.0
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 32, 32, 8, 32, 16, 32], help="rows of each micro-batch, in order")
    parser.add_argument("--modes", nargs="+", default=["sdpa:pad", "sdpa:free", "flex_attention:free", "flex_attention:pad"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True, help="as train.deterministic")
    args = parser.parse_args()
    if args.deterministic:  # as ray_spider.train.use_deterministic_kernels; this probe needs torch and transformers only
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(1)
    lengths = [torch.randint(300, 900, (rows,), generator=generator).tolist() for rows in args.rows]
    print(f"torch {torch.__version__}, {args.layers} layers of hidden {args.hidden}, {args.device}", flush=True)
    for mode in args.modes:
        attention, layout = mode.split(":")
        model = decoder(args, attention)
        for rows in lengths:
            batch = micro_batch(rows, layout == "free", args.device)
            (first, _), (again, peak) = step(model, batch), step(model, batch)
            print(
                f"{attention:15s} {layout:4s} rows {len(rows):3d} tokens {sum(rows):6d} padded slots {len(rows) * max(rows):6d}: "
                f"first {first * 1e3:8.1f} ms, again {again * 1e3:7.1f} ms, peak {peak:6.2f} GB", flush=True,
            )
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
