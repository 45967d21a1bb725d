"""GPU memory: the budget of a worker and the settings that fit it (the ``auto`` values).

One owner for every memory rule. A run config may leave four settings to the memory it meets:

    train.per_device_batch_size: auto     # the micro-batch; gradient accumulation keeps the effective batch
    train.gradient_checkpointing: auto    # on only when the micro-batch without it would be too small
    generation.merge_adapter: auto        # a bf16 merged copy for the dev rounds only where it fits beside training
    generation.batch_size: auto           # dev/predict rows decoded at once

The budget is ``train.gpu_memory_gb``, else ``$RAY_SPIDER_GPU_MEMORY_GB``, else the GPU's total memory.
A budget below the GPU's memory is enforced (``torch.cuda.set_per_process_memory_fraction``), so a
24 GB or 48 GB card can be emulated on a larger one. ``plan_memory`` is a pure function of
(budget, model shape, sequence length, LoRA rank; padding-free: the rows' lengths) and is unit-tested on CPU.

The per-token activation costs are estimates for LLaMA-family decoder layers in bf16 with LoRA on
all seven projections, calibrated on Llama-3.1-8B's shape on an H200 (2026-11-30): micro-batch 8 at
max_length 2048 without checkpointing peaked at 131 GB, i.e. ~7.6 MB per token over 32 layers; with
non-reentrant checkpointing a micro-batch of 4 trained in ~12 GB. They are upper bounds for the
length-grouped batches the trainer makes: every row is costed at the longest sequence it can have.
With ``train.padding_free`` a micro-batch holds no pad tokens: n rows are costed at the tokens of the
n longest training rows (length grouping can put exactly those together), plus, under sdpa, the
dense mask of the joined row (ModelShape.joined_mask_bytes).

A generation batch counts rows: with ``generation.candidates`` k, a question is k rows
(``inference.generate_candidates``). ``auto`` takes at most MAX_GENERATION_BATCH questions and
MAX_GENERATION_ROWS rows, as many whole questions as fit; each row is costed by
``ModelShape.generation_bytes_per_row`` (with ``generation.share_prefix_kv`` its prompt's shared
prefix is held once per group, not per row).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

from ray_spider.config import ConfigError

log = logging.getLogger(__name__)
GB = 1e9  # decimal, as gpu_peak_gb_* and the GPU vendors' sizes
MEMORY_ENV = "RAY_SPIDER_GPU_MEMORY_GB"
# Without checkpointing, a micro-batch this small leaves the GPU waiting on per-micro-batch costs
# (4-bit dequantization of every weight, LoRA's many small kernels); recomputing the forward pays better.
MIN_ROWS_WITHOUT_CHECKPOINTING = 4
MAX_MICRO_BATCH = 64  # more rows per micro-batch no longer speed a step up (H200, SmolLM2: 64 was the best)
MAX_GENERATION_BATCH = 1024  # questions: predict's fastest greedy dev-972 batch on the H200 (docs/benchmarks.md)
# rows: 135M, dev-972 voted k=16 with share_prefix_kv on the H200, the fastest: 8192 rows (512 questions) generated in
# 26.2 s against 31.8 s at 4096; all 16384 at once took 34.8 s with selection against 34.0 s (docs/benchmarks.md, "Shared
# prefix KV with CUDA graph decoding for more rows"; docs/decoding.md, "Same-seed re-run": 27.0 s against 59.9 s at 4096
# rows without shared KV)
MAX_GENERATION_ROWS = 8192
# share_prefix_kv: the prompt tokens a row holds beyond its group's shared prefix (the question and the template's
# tail); Spider's longest in SmolLM2's tokenizer is 68 (train) and 40 (dev) (tests/test_memory.py checks dev)
QUESTION_TOKENS = 128
MERGED_COPY_SHARE = 0.35  # a bf16 merged copy for dev rounds is kept only if it takes at most this share of the budget
HEADROOM_SHARE = 0.12  # allocator fragmentation and kernels' workspaces: not planned for
FIXED_RESERVE_GB = 1.0  # CUDA libraries' handles and workspaces, the fused LM head's tiles


class DoesNotFit(ConfigError):
    """No setting fits the budget; the message names the budget and the smallest need."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a LLaMA-family decoder (``transformers`` config names in brackets)."""

    hidden: int  # hidden_size
    intermediate: int  # intermediate_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads
    vocab: int  # vocab_size
    tied_embeddings: bool = False

    @classmethod
    def from_hf_config(cls, config) -> "ModelShape":
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            vocab=config.vocab_size,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def projection_sizes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one layer, by module name."""
        h, i, kv = self.hidden, self.intermediate, self.kv_width
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.projection_sizes().values())

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def params(self) -> int:
        return self.linear_params() + self.embedding_params() + (2 * self.layers + 1) * self.hidden

    def weights_gb(self, quantized: bool) -> float:
        """Weights on the GPU: NF4 + double quant is ~0.53 bytes per projection weight; embeddings,
        LM head and norms stay bf16 (bitsandbytes quantizes Linear layers only, never the LM head)."""
        if not quantized:
            return 2 * self.params() / GB
        return (0.53 * self.linear_params() + 2 * (self.params() - self.linear_params())) / GB

    def lora_params(self, rank: int, targets: list[str] | tuple[str, ...]) -> int:
        sizes = self.projection_sizes()
        return self.layers * sum(rank * (sizes[name][0] + sizes[name][1]) for name in targets if name in sizes)

    def activation_bytes_per_token(self, checkpointing: bool) -> float:
        """Saved for backward, per token of a micro-batch (bf16).

        One layer keeps ~12 hidden-wide and ~5 intermediate-wide tensors per token (norms, q/k/v/o,
        attention output, residuals, LoRA inputs and dropout masks; gate, up, their product). With
        checkpointing a layer keeps its input (and its gradient on the way back) and one layer at a
        time is recomputed in full."""
        layer = 2 * (12 * self.hidden + 5 * self.intermediate)
        if checkpointing:
            return self.layers * 2 * 2 * self.hidden + layer
        return self.layers * layer

    def joined_mask_bytes(self, tokens: int, checkpointing: bool) -> float:
        """Bytes of sdpa (or eager) over one padding-free row of ``tokens`` tokens: transformers' boolean
        tokens x tokens block-diagonal mask (masking_utils.sdpa_mask), the bf16 copy torch's attention
        makes of it, which each layer keeps for backward (one layer at a time with checkpointing), and
        one more copy in flight. On an H200 (bench/padding_free_attention.py: 4 layers of Llama-3.1-8B's
        shape, 32 rows, 18,980 tokens) sdpa peaked 3.82 GB above flex_attention's block mask; this gives 3.96."""
        return tokens * tokens * (3 + 2 * (1 if checkpointing else self.layers))

    def kv_bytes_per_token(self) -> float:
        """Keys and values of all layers (bf16), per token held in the KV cache."""
        return self.layers * 2 * self.kv_width * 2

    def prefill_bytes_per_token(self) -> float:
        """One layer's activations (bf16) while a prompt token is read."""
        return 2 * (2 * self.intermediate + 4 * self.hidden)

    def generation_bytes_per_token(self) -> float:
        """KV cache of all layers plus one layer's prefill activations (bf16), per token of a prompt+answer."""
        return self.kv_bytes_per_token() + self.prefill_bytes_per_token()

    def generation_bytes_per_row(self, prompt_tokens: int, answer_tokens: int, candidates: int = 1, share_prefix_kv: bool = False) -> float:
        """Bytes of one row of a decoding batch, prompts of at most ``prompt_tokens`` and answers of at most
        ``answer_tokens`` tokens.

        A row with its own copy of the prompt (prefix caching alone copies the shared prefix to each row):
        prompt and answer at generation_bytes_per_token. With ``share_prefix_kv`` a row holds the KV of at
        most QUESTION_TOKENS after its group's prefix (read in the first step: one layer's activations too)
        and of its answer (decoded a token a step: KV only); the prefix, at most the whole prompt, is held
        once per group (prefix_cache.prefix_groups: a database's questions in the batch), and a group holds
        at least one question's ``candidates`` rows, so a row bears at most 1/candidates of one: one prefix
        per question, the bound known without the questions (a batch of Spider questions holds far fewer
        databases). Never above the row's own copy, so greedy rows (candidates 1) cost as without it. Not
        planned: the first step's attention scores over the prefixes (shared_prefix_kv.attend), taken
        before any answer's KV exists; a question longer than QUESTION_TOKENS (a user's question file).
        """
        copy = self.generation_bytes_per_token() * (prompt_tokens + answer_tokens)
        if not share_prefix_kv:
            return copy
        question = min(QUESTION_TOKENS, prompt_tokens)
        own = self.kv_bytes_per_token() * (question + answer_tokens) + self.prefill_bytes_per_token() * question
        return min(copy, own + self.generation_bytes_per_token() * prompt_tokens / candidates)


@dataclass(frozen=True)
class MemoryPlan:
    """What was chosen for one worker, and the estimates it was chosen by (GB)."""

    budget_gb: float
    micro_batch: int
    gradient_checkpointing: bool
    merge_adapter: bool
    generation_batch: int
    estimate_train_gb: float
    estimate_dev_gb: float

    def as_dict(self) -> dict:
        return asdict(self)


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest d <= limit that divides n (1 at least): a micro-batch that keeps the effective batch."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def plan_memory(
    budget_gb: float,
    shape: ModelShape,
    seq_len: int,
    rows_per_device: int,
    *,
    lora_rank: int = 16,
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    quantized: bool = True,
    max_new_tokens: int = 256,
    micro_batch: int | None = None,
    checkpointing: bool | None = None,
    merge: bool | None = None,
    generation_batch: int | None = None,
    row_tokens: Sequence[int] | None = None,
    dense_joined_mask: bool = True,
    candidates: int = 1,
    share_prefix_kv: bool = False,
) -> MemoryPlan:
    """Settings for one training worker with ``budget_gb`` of GPU memory; a fixed (not None)
    ``micro_batch``/``checkpointing``/``merge``/``generation_batch`` is kept, the others are chosen.

    ``seq_len``: the longest training sequence in tokens (max_length, or the longest example when
    shorter). ``rows_per_device``: effective batch / workers; the micro-batch divides it.
    ``row_tokens``: padding-free rows (train.padding_free), the tokens of every training row; a
    micro-batch of n rows then costs the n longest rows' tokens instead of n x seq_len, and, with
    ``dense_joined_mask`` (sdpa, eager), the dense mask of their joined row. None: padded rows.
    Rules: the merged bf16 copy only where it takes at most MERGED_COPY_SHARE of the budget and,
    resident beside training after the first dev round, changes neither the micro-batch nor checkpointing;
    checkpointing only where a micro-batch of MIN_ROWS_WITHOUT_CHECKPOINTING (a given ``micro_batch``:
    that many rows) does not fit without it;
    the micro-batch is the largest divisor of rows_per_device that fits, at most MAX_MICRO_BATCH.
    The generation batch (rows, ``candidates`` per question) is the most whole questions whose rows fit
    beside the trained model (ModelShape.generation_bytes_per_row, ``share_prefix_kv`` as the engine
    decodes), at most MAX_GENERATION_BATCH questions and MAX_GENERATION_ROWS rows.
    Raises DoesNotFit when not even one row fits.
    """
    weights = shape.weights_gb(quantized)
    lora_gb = shape.lora_params(lora_rank, lora_targets) * 8 / GB  # bf16 weight + grad + two Adam states
    copy_gb = 2 * shape.params() / GB  # the merged bf16 copy of the dev rounds
    base_usable = budget_gb * (1 - HEADROOM_SHARE) - FIXED_RESERVE_GB - weights - lora_gb

    # tokens of a micro-batch of n rows: padded, n x seq_len; padding-free, its n longest rows
    longest_first = sorted(row_tokens or (), reverse=True)

    def micro_batch_gb(rows: int, with_checkpointing: bool) -> float:
        if row_tokens is None:
            return shape.activation_bytes_per_token(with_checkpointing) * seq_len * rows / GB
        tokens = sum(longest_first[:rows])
        mask = shape.joined_mask_bytes(tokens, with_checkpointing) if dense_joined_mask else 0.0
        return (shape.activation_bytes_per_token(with_checkpointing) * tokens + mask) / GB

    def rows_that_fit(usable: float, with_checkpointing: bool) -> int:
        """The most rows whose activations fit ``usable`` GB (padding-free: counted up to the larger of
        MAX_MICRO_BATCH and rows_per_device, more are never taken)."""
        if row_tokens is None:
            return int(max(usable, 0) // micro_batch_gb(1, with_checkpointing))
        limit = max(MAX_MICRO_BATCH, rows_per_device)
        return next((rows - 1 for rows in range(1, limit + 1) if micro_batch_gb(rows, with_checkpointing) > usable), limit)

    def choose(usable: float) -> tuple[bool, int]:
        """(checkpointing, rows that fit) for ``usable`` GB of activations."""
        use_checkpointing = checkpointing
        if use_checkpointing is None:
            # a given micro-batch needs all its rows; a chosen one at least MIN_ROWS_WITHOUT_CHECKPOINTING
            needed = micro_batch or min(MIN_ROWS_WITHOUT_CHECKPOINTING, rows_per_device)
            use_checkpointing = rows_that_fit(usable, False) < needed
        return use_checkpointing, rows_that_fit(usable, use_checkpointing)

    def rows(usable: float) -> int:
        use_checkpointing, fit = choose(usable)
        return micro_batch or largest_divisor_at_most(rows_per_device, min(max(fit, 1), MAX_MICRO_BATCH))

    if merge is None:
        # training speed first: the copy (resident beside training after the first dev round) only where
        # it changes neither the micro-batch nor checkpointing
        merge = copy_gb <= MERGED_COPY_SHARE * budget_gb and choose(base_usable - copy_gb)[0] == choose(base_usable)[0] \
            and rows(base_usable - copy_gb) == rows(base_usable) and choose(base_usable - copy_gb)[1] >= rows(base_usable)
    merged_gb = copy_gb if merge else 0.0
    checkpointing, fit = choose(base_usable - merged_gb)
    if micro_batch is None:
        if fit < 1:
            need = weights + lora_gb + merged_gb + FIXED_RESERVE_GB + micro_batch_gb(1, True)
            raise DoesNotFit(
                f"one row of {seq_len} tokens does not fit in {budget_gb:g} GB even with gradient checkpointing "
                f"(needs ~{need / (1 - HEADROOM_SHARE):.1f} GB): lower train.max_length, use a larger GPU"
                + (" or set generation.merge_adapter=false" if merge else "")
            )
        micro_batch = largest_divisor_at_most(rows_per_device, min(fit, MAX_MICRO_BATCH))
    train_gb = weights + lora_gb + merged_gb + FIXED_RESERVE_GB + micro_batch_gb(micro_batch, checkpointing)
    # Dev rounds: the trained model (and merged copy) stay; activations are freed; prompts are at
    # most seq_len long and answers max_new_tokens.
    dev_free = budget_gb * (1 - HEADROOM_SHARE) - FIXED_RESERVE_GB - weights - lora_gb - merged_gb
    per_row_dev = shape.generation_bytes_per_row(seq_len, max_new_tokens, candidates, share_prefix_kv) / GB
    if generation_batch is None:
        rows = min(MAX_GENERATION_BATCH * candidates, MAX_GENERATION_ROWS, int(dev_free // per_row_dev))
        generation_batch = max(candidates, rows - rows % candidates)  # the engine takes batch_size // candidates questions
    dev_gb = weights + lora_gb + merged_gb + FIXED_RESERVE_GB + generation_batch * per_row_dev
    return MemoryPlan(
        budget_gb=round(budget_gb, 2),
        micro_batch=micro_batch,
        gradient_checkpointing=checkpointing,
        merge_adapter=merge,
        generation_batch=generation_batch,
        estimate_train_gb=round(train_gb, 2),
        estimate_dev_gb=round(dev_gb, 2),
    )


def budget_gb(setting: float | None, device) -> float | None:
    """The memory budget of a worker in GB: the setting, else $RAY_SPIDER_GPU_MEMORY_GB, else the
    GPU's total memory; None on a CPU worker without a setting (no GPU budget to plan for)."""
    import torch

    if setting is None and os.environ.get(MEMORY_ENV):
        try:
            setting = float(os.environ[MEMORY_ENV])
        except ValueError:
            setting = None
        if setting is None or not math.isfinite(setting) or setting <= 0:
            raise ConfigError(f"${MEMORY_ENV}={os.environ[MEMORY_ENV]!r} is not a number of GB above 0; unset it or give e.g. 24") from None
    device = torch.device(device)
    if device.type != "cuda":
        return setting
    total = torch.cuda.get_device_properties(device).total_memory / GB
    return min(setting, total) if setting is not None else total


def limit_gpu_memory(budget: float | None, device) -> None:
    """Cap this process's CUDA allocator at ``budget`` GB when that is below the GPU's memory: an
    allocation beyond it raises CUDA out-of-memory, as on a GPU of that size (the CUDA context
    itself, ~0.5 GB, is outside the cap)."""
    import torch

    device = torch.device(device)
    if budget is None or device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    if budget * GB < total:
        torch.cuda.set_per_process_memory_fraction(budget * GB / total, device)


def torch_device_type(device) -> str:
    import torch

    return torch.device(device).type


def host_memory_gb() -> float:
    """GB of host memory free for a CPU run: Linux's MemAvailable (free plus reclaimable caches), not
    the machine's total, which other processes share; the total where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


def model_shape(model_name: str) -> ModelShape:
    """The shape of a model spec (``ModelConfig.name``), read from its config.json (no weights loaded)."""
    from transformers import AutoConfig

    from ray_spider.model import resolve_model

    return ModelShape.from_hf_config(AutoConfig.from_pretrained(resolve_model(model_name)))


def keeps_dense_mask(attn_implementation: str | None) -> bool:
    """Whether attention over a padding-free row needs a dense tokens x tokens mask: sdpa (transformers'
    default, None) and eager do; flex_attention (a sparse block mask) and flash attention (varlen kernels
    given the rows' boundaries) do not."""
    name = attn_implementation or "sdpa"
    return not ("flex" in name or "flash" in name)


def resolve_memory_settings(
    cfg, device, seq_len: int, shape: ModelShape | None = None, gpu_share: float = 1.0, row_lengths: Sequence[int] | None = None,
):
    """(cfg with every ``auto`` memory setting replaced by its value, the MemoryPlan) for a worker on ``device``;
    the plan is None for a model whose config lacks LLaMA's size names when no setting is ``auto``.

    ``cfg`` is a RunConfig; ``seq_len`` the longest training sequence (tokens); ``gpu_share`` the
    worker's share of its GPU (a sweep's fractional ``gpus_per_worker``): without an explicit budget
    the plan takes that share of the GPU's memory (not enforced: trials sharing a GPU never were).
    ``row_lengths``: the tokens of every training row; train.padding_free plans by them (without
    them, every row at seq_len).
    An explicit budget is enforced first (limit_gpu_memory). A CPU worker without train.gpu_memory_gb
    plans for the host's RAM.
    """
    train, generation = cfg.train, cfg.generation
    explicit = train.gpu_memory_gb is not None or bool(os.environ.get(MEMORY_ENV))
    budget = budget_gb(train.gpu_memory_gb, device)
    limit_gpu_memory(budget, device)
    if budget is not None and not explicit:
        budget *= min(1.0, gpu_share)
    rows_per_device = train.effective_batch_size // train.num_workers
    if shape is None:
        try:
            shape = model_shape(cfg.model.name)
        except AttributeError as exc:  # a config without LLaMA's size names
            autos = [key for key, value in (("train.per_device_batch_size", train.per_device_batch_size),
                     ("train.gradient_checkpointing", train.gradient_checkpointing),
                     ("generation.merge_adapter", generation.merge_adapter), ("generation.batch_size", generation.batch_size)) if value == "auto"]
            if autos:
                raise ConfigError(f"{', '.join(autos)}=auto needs a LLaMA-family model.name, {cfg.model.name!r} has no {exc.name}") from None
            return cfg, None
    plan_for = partial(
        plan_memory,
        budget if budget is not None else host_memory_gb(),
        shape,
        seq_len,
        rows_per_device,
        lora_rank=cfg.lora.r,
        lora_targets=tuple(cfg.lora.target_modules),
        quantized=cfg.model.quantization != "none",
        max_new_tokens=generation.max_new_tokens,
        checkpointing=None if train.gradient_checkpointing == "auto" else train.gradient_checkpointing,
        merge=None if generation.merge_adapter == "auto" else generation.merge_adapter,
        generation_batch=None if generation.batch_size == "auto" else generation.batch_size,
        row_tokens=(row_lengths or [seq_len] * rows_per_device) if train.padding_free else None,
        dense_joined_mask=keeps_dense_mask(cfg.model.attn_implementation),
        candidates=generation.candidates,
        share_prefix_kv=generation.share_prefix_kv,
    )
    try:
        plan = plan_for(micro_batch=None if train.per_device_batch_size == "auto" else train.per_device_batch_size)
    except DoesNotFit as exc:
        source = (f"train.gpu_memory_gb={train.gpu_memory_gb:g}" if train.gpu_memory_gb is not None else f"${MEMORY_ENV}" if explicit
                  else "this GPU's memory" if torch_device_type(device) == "cuda" else "this host's memory")
        raise DoesNotFit(f"{exc} (the budget: {source})") from None
    if train.per_device_batch_size != "auto" and plan.estimate_train_gb > plan.budget_gb * (1 - HEADROOM_SHARE):
        warn_given_micro_batch(plan, plan_for)
    resolved = cfg.model_copy(update={
        "train": train.model_copy(update={"per_device_batch_size": plan.micro_batch, "gradient_checkpointing": plan.gradient_checkpointing}),
        "generation": generation.model_copy(update={"merge_adapter": plan.merge_adapter, "batch_size": plan.generation_batch}),
    })
    return resolved, plan


def warn_given_micro_batch(plan: MemoryPlan, plan_for: Callable[..., MemoryPlan]) -> None:
    """A warning that a given train.per_device_batch_size is estimated over the budget, with the
    micro-batch ``auto`` would choose (``plan_for(micro_batch=None)``; none when nothing fits)."""
    try:
        fitting = f"set train.per_device_batch_size=auto ({plan_for(micro_batch=None).micro_batch} here)"
    except DoesNotFit as exc:
        fitting = str(exc)
    log.warning(
        "train.per_device_batch_size=%d is estimated at %.1f GB of GPU memory in training (gradient checkpointing %s), "
        "over the %.3g GB budget less %d%% headroom; the estimates err on the safe side, but if it runs out of memory, %s",
        plan.micro_batch, plan.estimate_train_gb, "on" if plan.gradient_checkpointing else "off", plan.budget_gb,
        round(HEADROOM_SHARE * 100), fitting,
    )


def resolve_generation_settings(cfg, device):
    """``cfg`` (a RunConfig) with ``generation.merge_adapter``/``batch_size`` ``auto`` replaced, for
    prediction without training: the same rules as a training worker's dev rounds (plan_memory)."""
    generation = cfg.generation
    if "auto" not in (generation.merge_adapter, generation.batch_size):
        return cfg
    budget = budget_gb(cfg.train.gpu_memory_gb, device)
    limit_gpu_memory(budget, device)
    plan = plan_memory(
        budget if budget is not None else host_memory_gb(),
        model_shape(cfg.model.name),
        cfg.train.max_length,
        1,
        quantized=cfg.model.quantization != "none",
        max_new_tokens=generation.max_new_tokens,
        micro_batch=1,
        checkpointing=True,
        merge=None if generation.merge_adapter == "auto" else generation.merge_adapter,
        generation_batch=None if generation.batch_size == "auto" else generation.batch_size,
        candidates=generation.candidates,
        share_prefix_kv=generation.share_prefix_kv,
    )
    return cfg.model_copy(update={"generation": generation.model_copy(update={"merge_adapter": plan.merge_adapter, "batch_size": plan.generation_batch})})
