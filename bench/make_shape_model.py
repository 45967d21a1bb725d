"""A model with a real model's shape and random weights, saved as a local HF folder with SmolLM2's
tokenizer: dry-run a config's speed and memory (train, dev rounds, sweeps) before any weights are
downloaded. Its answers are noise; its tokens/s and GB are the real model's.

    python bench/make_shape_model.py --shape llama-3.1-8b --out models/llama31-8b-shape            # on a GPU: ~1-2 min
    python bench/make_shape_model.py --shape llama-3.1-8b --layers 2 --out /tmp/l8b-2l --device cpu # a dry run on CPU
    ray-spider train sweeps/qlora_llama31_8b.yaml model.name=models/llama31-8b-shape train.gpu_memory_gb=24
    python bench/make_shape_model.py --config-only --out /tmp/l8b-config                          # seconds, no weights
    ray-spider plan sweeps/qlora_llama31_8b.yaml model.name=/tmp/l8b-config train.gpu_memory_gb=24  # the memory plan, on CPU

The weights are allocated on ``torch.device('meta')``, materialized with ``to_empty`` on --device
(a GPU by default when there is one) in bf16, and filled with N(0, 0.02) (norms with ones): no
CPU-side init of 8B float32 weights. Saved in 5 GB safetensors shards, as hub checkpoints are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# Config values of the hub releases' config.json (vocab, sizes, RoPE) that decide speed and memory.
SHAPES = {
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
    },
    # the tests' tiny LLaMA (tests/conftest.py): a dry run of a whole script in seconds
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": None,  # the tokenizer's
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    },
}


def shape_config(shape: str, tokenizer, layers: int | None = None):
    """LlamaConfig of ``shape`` (SHAPES), its special tokens taken from ``tokenizer``; ``layers`` cuts the depth."""
    from transformers import LlamaConfig

    values = dict(SHAPES[shape])
    values["vocab_size"] = values["vocab_size"] or len(tokenizer)
    if layers is not None:
        values["num_hidden_layers"] = layers
    return LlamaConfig(
        **values,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def random_model(config, device: str, seed: int = 0):
    """LlamaForCausalLM of ``config`` in bf16 on ``device``, random N(0, initializer_range) weights, norms 1."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(torch.bfloat16)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() == 1:
            param.fill_(1.0)
        else:
            param.normal_(0.0, config.initializer_range, generator=generator)
    # to_empty left the rotary inverse frequencies uninitialized; they are not saved (recomputed at load)
    return model


def make_shape_config(shape: str, out: Path, layers: int | None = None) -> dict:
    """Write only config.json and the tokenizer (no weights, seconds): enough for `ray-spider plan`."""
    config, tokenizer = shape_config_and_tokenizer(shape, layers)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"shape": shape, "layers": config.num_hidden_layers, "weights": False}


def shape_config_and_tokenizer(shape: str, layers: int | None = None):
    from ray_spider.config import OFFLINE_MODEL
    from ray_spider.model import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(OFFLINE_MODEL))
    return shape_config(shape, tokenizer, layers), tokenizer


def make_shape_model(shape: str, out: Path, layers: int | None = None, device: str | None = None, seed: int = 0) -> dict:
    """Write the folder; returns what was made and how long each part took (s)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    config, tokenizer = shape_config_and_tokenizer(shape, layers)
    model = random_model(config, device, seed)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    made = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, max_shard_size="5GB")
    tokenizer.save_pretrained(out)
    info = {
        "shape": shape,
        "layers": config.num_hidden_layers,
        "params": sum(p.numel() for p in model.parameters()),
        "random_weights": True,
        "seed": seed,
        "device": device,
        "init_s": round(made - started, 1),
        "save_s": round(time.perf_counter() - made, 1),
        "gb_on_disk": round(sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e9, 2),
    }
    (out / "ray_spider_shape.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--out", type=Path, required=True, help="the HF folder to write (model.name=OUT)")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers (a quick dry run)")
    parser.add_argument("--device", default=None, help="where the weights are made (default: cuda when there is one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-only", action="store_true", help="config.json and tokenizer only, no weights: for `ray-spider plan`")
    args = parser.parse_args()
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    if args.config_only:
        info = make_shape_config(args.shape, args.out, args.layers)
        print(f"made {args.out}: {args.shape} with {info['layers']} layers, config and tokenizer only (no weights)")
        return
    info = make_shape_model(args.shape, args.out, args.layers, args.device, args.seed)
    print(
        f"made {args.out}: {args.shape} with {info['layers']} layers, {info['params'] / 1e9:.3f}B params, random bf16 "
        f"weights on {info['device']} in {info['init_s']} s, saved {info['gb_on_disk']} GB in {info['save_s']} s"
    )


if __name__ == "__main__":
    main()
