"""One QLoRA SFT run: TRL's SFTTrainer inside a Ray Train TorchTrainer, with dev EX/EM during training.

    ray-spider train sweeps/qlora_r16.yaml [train.learning_rate=2e-4 ...]

``train_loop`` runs on every Ray Train worker (DDP across workers, one GPU each when there are
GPUs). Every ``train.eval_every_steps`` optimizer steps, and at the end, the workers generate the
dev answers (each its own shard), rank 0 scores them with the evaluator, and every worker calls
``ray.train.report`` with dev_ex/dev_em; rank 0 attaches the checkpoint: the adapter (PEFT
format), its dev predictions (dev_eval/) and the Trainer's state at that step (optimizer,
scheduler, RNG, data position). Ray keeps the best checkpoints by dev_ex, and the latest; a run
restarted under the same name (a retried sweep trial) resumes from the latest. The Ray-specific
lines are marked ``# Ray:``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, replace
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from ray_spider import tracking
from ray_spider.config import ConfigError, RunConfig
from ray_spider.errors import UserError, stop_on_sigterm_as_on_ctrl_c
from ray_spider.data import build_sft_dataset, scored_dev_examples, train_examples
from ray_spider.memory import MemoryPlan, keeps_dense_mask, resolve_memory_settings
from ray_spider.model import MergedCopy, apply_liger_kernels, apply_lora, compile_decoder_layers, load_model, load_tokenizer, resolve_model, save_adapter
from ray_spider.placement_group import PLACEMENT_GROUP_METRIC, worker_placement_group_id
from ray_spider.predict import PredictionResult, generate_raw, score_outputs, with_settings
from ray_spider.progress import LOG_FILE, PROGRESS_FILE, ProgressFile, output_to, show_progress
from ray_spider.prompt import Prompter, tokenize_example
from ray_spider.spider import Spider
from ray_spider.tracking import dev_round_logs

log = logging.getLogger(__name__)

# Multicast over NVLink can put a host's shared GPUs out of service: off everywhere, children too.
WORKER_ENV = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def use_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def sft_config(cfg: RunConfig, output_dir: str, device: torch.device, report_to: list[str] = (), run_name: str | None = None) -> SFTConfig:
    """TRL's SFTConfig of a run; ``report_to``: transformers' tracking integrations (tracking.py)."""
    train = cfg.train
    return SFTConfig(
        output_dir=output_dir,
        learning_rate=train.learning_rate,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=train.lr_scheduler,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        warmup_steps=train.warmup_ratio,  # a float below 1 is a fraction of all steps
        weight_decay=train.weight_decay,
        # Rows come cut to train.max_length (truncate_rows): TRL refuses padding_free without packing
        # while max_length is set (it would not cut the joined rows), so it gets None either way.
        max_length=None,
        completion_only_loss=True,  # loss on the assistant SQL and its end-of-turn token only
        packing=False,
        # No pad tokens: TRL's collator joins a micro-batch into one row with position_ids restarting per
        # example and no attention_mask (trl/trainer/sft_trainer.py, DataCollatorForLanguageModeling).
        # TRL's help names FlashAttention only, but with sdpa or eager transformers finds the joined rows
        # in position_ids when attention_mask is None and there is no KV cache (masking_utils:
        # _preprocess_mask_arguments -> find_packed_sequence_indices) and masks attention block-diagonally
        # (packed_sequence_mask_function): the same loss as padded rows (tests/test_padding_free.py).
        # sdpa then attends over the whole joined row, masked (warn_dense_padding_free).
        padding_free=train.padding_free,
        gradient_checkpointing=train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=use_bf16(device),
        use_cpu=device.type == "cpu",
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        # Saved only on dev rounds (DevEvalCallback asks for it), then reported to Ray with the dev
        # scores; the local copy is dropped once Ray holds it (only the newest one stays on disk).
        save_strategy="no",
        save_total_limit=1,
        eval_strategy="no",
        report_to=list(report_to),
        run_name=run_name,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


class DevEvalCallback(TrainerCallback):
    """Dev EX/EM every N optimizer steps and at the end; reports each round to Ray with its checkpoint."""

    def __init__(self, cfg: RunConfig, prompter: Prompter, tokenizer, dev, device):
        self.cfg, self.prompter, self.tokenizer, self.dev, self.device = cfg, prompter, tokenizer, dev, device
        self.merged: MergedCopy | None = None
        self.tokens_seen = 0.0
        self.eval_seconds = self.eval_seconds_in_loop = 0.0  # eval rounds inside the train loop: kept apart for throughput
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.history: list[dict] = []  # every logged loss and every eval round, for the run records
        self.last_eval_step = -1
        self.start_s: float | None = None  # from launching the Ray Train job to train_loop: Ray's part of the start-up
        self.progress: ProgressFile | None = None  # rank 0 of a `train` run: the terminal's progress bar reads it
        self.setup_s: float | None = None  # from there to the first step: model, data, tokenizing
        self.steps_started = 0.0  # when the optimizer steps since the last round began
        self.train_started = 0.0  # when trainer.train() began (a resumed run: this attempt)
        self.trainer = None  # set once built: its log() sends the dev rounds to the trackers (report_to)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.tokens_seen = float(logs["num_tokens"])  # TRL's running count of non-pad tokens trained on
        if logs and "loss" in logs:
            self.history.append({
                "step": state.global_step, "epoch": state.epoch, "train_loss": float(logs["loss"]), "learning_rate": logs.get("learning_rate"),
                # throughput over time: tokens and seconds of optimizer steps so far (the loss's .item() has synchronized)
                "tokens_seen": logs.get("num_tokens"), "train_elapsed_s": round(time.perf_counter() - self.train_started - self.eval_seconds, 3),
            })

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps_started = self.train_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        # A dev round is taken right after the Trainer saves its state (on_save): the checkpoint
        # Ray keeps is then the adapter with everything a retried trial resumes from.
        last = state.global_step >= state.max_steps
        if last or state.global_step % self.cfg.train.eval_every_steps == 0:
            control.should_save = True
        if last:  # the last step's loss, tokens and seconds are recorded whatever logging_steps
            control.should_log = True

    def on_save(self, args, state, control, model=None, **kwargs):
        trainer_checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        self.evaluate_and_report(state, model, trainer_checkpoint)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.eval_seconds_in_loop = self.eval_seconds  # train_runtime is taken before this callback
        if self.last_eval_step != state.global_step:
            self.evaluate_and_report(state, model)

    def _all_raw_outputs(self, model) -> list[str]:
        """Each worker answers every world-th question; rank 0 gets them all back in order."""
        shard = self.dev[self.rank :: self.world]
        if self.cfg.generation.merge_adapter:
            self.merged = self.merged or MergedCopy(self.cfg.model, self.cfg.lora, self.device)
            model = self.merged.sync(model)
        raw = generate_raw(
            model, self.tokenizer, self.prompter, shard, self.cfg.generation, self.rank == 0, self.cfg.eval
        )  # the same decoding as `predict`: the db_id of every question travels in the examples
        if self.world == 1:
            return raw
        gathered = [None] * self.world
        dist.all_gather_object(gathered, raw)
        merged = [None] * len(self.dev)
        for rank, outputs in enumerate(gathered):
            merged[rank :: self.world] = outputs
        return merged

    def evaluate_and_report(self, state, model, trainer_checkpoint: Path | None = None) -> None:
        """Score the dev questions and report the round to Ray, with rank 0's checkpoint: the adapter
        (PEFT format) at the top, ``dev_eval/``, and, from ``trainer_checkpoint`` (the Trainer's
        save of this step), optimizer, scheduler, RNG and trainer state for resuming."""
        import ray.train  # Ray: imported here so the callback also runs outside Ray (tests)

        self.last_eval_step = state.global_step
        started = self.round_started = time.perf_counter()
        steps_s = round(started - self.steps_started, 2)  # optimizer steps since the previous round
        peaks = {"gpu_peak_gb_train": take_peak_memory_gb(self.device)}  # since the previous round
        raw = self._all_raw_outputs(model)
        generated = time.perf_counter()
        peaks["gpu_peak_gb_dev"] = take_peak_memory_gb(self.device)
        result = None
        if self.rank == 0:
            result = with_settings(score_outputs(self.prompter.spider, self.dev, raw, self.cfg.eval, progress=False), self.prompter, self.cfg.generation)
            # seconds as `predict` records them (generation includes gathering the workers' shards)
            timings = {"generate_s": round(generated - started, 2), "score_s": round(time.perf_counter() - generated, 2)}
            result = replace(result, summary=replace(result.summary, **timings))
        self.eval_seconds += time.perf_counter() - started
        measured = {"train_s": steps_s, **{key: gb for key, gb in peaks.items() if gb is not None}}
        metrics = self._round_metrics(state, result, measured)
        if self.progress is not None and metrics:
            self.progress.dev_round(metrics["step"], metrics["dev_ex"])
        if self.world > 1:
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        if self.trainer is not None:
            self.log_to_trackers(dev_round_logs(metrics))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                if trainer_checkpoint is not None:
                    shutil.copytree(trainer_checkpoint, tmp, dirs_exist_ok=True)
                save_adapter(model, tmp, self.cfg.model.name)  # PEFT format: adapter_config.json + adapter_model.safetensors
                result.write(Path(tmp) / "dev_eval")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            report = {**metrics, PLACEMENT_GROUP_METRIC: worker_placement_group_id()}
            ray.train.report(report, checkpoint=checkpoint)  # Ray: every worker reports, rank 0 checkpoints
        self.steps_started = time.perf_counter()

    def log_to_trackers(self, logs: dict) -> None:
        """Through the trainer's log(): TensorBoard and MLflow (report_to) get the dev round in the same
        writers and at the same step as train loss. log() clears the flag that makes the trainer log
        the loss of this step afterwards; it is put back, or that loss would be lost."""
        control = self.trainer.control
        pending = control.should_log
        self.trainer.log(logs)
        self.trainer.control.should_log = control.should_log = pending

    def _round_metrics(self, state, result: PredictionResult | None, measured: dict) -> dict:
        if result is None:
            return {}
        summary = result.summary
        metrics = {
            "step": state.global_step,
            "epoch": float(state.epoch or 0.0),
            "dev_ex": summary.ex,
            "dev_em": summary.em,
            "sql_only_rate": summary.sql_only_rate,
            "dev_n": summary.n,
            "dev_eval_s": round(time.perf_counter() - self.round_started, 2),
            "start_s": self.start_s,
            "setup_s": self.setup_s,
            **{f"dev_ex_{level}": rates.ex for level, rates in summary.by_hardness.items()},
            **{f"dev_em_{level}": rates.em for level, rates in summary.by_hardness.items()},
            **measured,
        }
        self.history.append(dict(metrics))
        return metrics


def take_peak_memory_gb(device: torch.device) -> float | None:
    """This process's CUDA memory peak since the last call, in GB (the count restarts); None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 1e9
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def worker_gpu_share() -> float:
    """The GPUs Ray assigned this worker (a fraction when trials share a GPU); 1.0 outside Ray or without GPUs."""
    import ray

    if not ray.is_initialized():
        return 1.0
    return ray.get_runtime_context().get_assigned_resources().get("GPU") or 1.0


def training_rows(cfg: RunConfig, spider: Spider):
    """(prompter, tokenizer, SFT rows, the rows tokenized) of a run: what training reads, before any model loads."""
    prompter = Prompter(spider, cfg.prompt)
    tokenizer = load_tokenizer(resolve_model(cfg.model.name))
    train_set = build_sft_dataset(prompter, train_examples(spider, cfg.data))
    return prompter, tokenizer, train_set, tokenize_dataset(train_set, tokenizer)


def plan_worker_memory(cfg: RunConfig, device, tokenized, gpu_share: float = 1.0):
    """memory.resolve_memory_settings for a worker on ``device`` training the ``tokenized`` rows: the
    longest row is the sequence length, and padding-free micro-batches are costed by the rows' lengths.
    Returns (cfg with the ``auto`` settings filled, MemoryPlan or None); raises memory.DoesNotFit."""
    lengths = row_lengths(tokenized, cfg.train.max_length)
    return resolve_memory_settings(cfg, device, max(lengths, default=1), gpu_share=gpu_share, row_lengths=lengths)


def tokenize_dataset(train_set, tokenizer):
    """The SFT rows (build_sft_dataset) as input_ids + completion_mask (tokenize_example)."""
    return train_set.map(tokenize_example, fn_kwargs={"tokenizer": tokenizer}, remove_columns=train_set.column_names)


def row_lengths(tokenized, max_length: int) -> list[int]:
    """Tokens of each row the trainer will see (rows are truncated to max_length, truncate_rows)."""
    return [min(max_length, len(ids)) for ids in tokenized["input_ids"]]


def _cut_row(row: dict, max_length: int) -> dict:
    return {"input_ids": row["input_ids"][:max_length], "completion_mask": row["completion_mask"][:max_length]}


def _learns_something(row: dict) -> bool:
    return any(row["completion_mask"])


def truncate_rows(tokenized, max_length: int):
    """Rows (tokenize_dataset) cut to their first ``max_length`` tokens; a row with no completion
    token left (its prompt alone fills max_length: nothing to learn) is dropped. TRL's own rule
    (SFTTrainer._prepare_dataset, truncation_mode keep_start), taken over here because TRL applies it
    only while SFTConfig.max_length is set, which padding_free forbids (sft_config). Raises
    ConfigError naming train.max_length when no row is left."""
    kept = tokenized.map(_cut_row, fn_kwargs={"max_length": max_length}).filter(_learns_something)
    if len(tokenized) and not len(kept):
        raise ConfigError(
            f"train.max_length={max_length} leaves nothing to learn: the prompt of every one of the {len(tokenized)} "
            "training rows fills it; raise train.max_length"
        )
    return kept


def build_trainer(cfg: RunConfig, model, tokenizer, tokenized, output_dir: str, device, callbacks=(), report_to: list[str] = (), run_name: str | None = None) -> SFTTrainer:
    """TRL's SFTTrainer on pre-tokenized rows (tokenize_dataset), cut to train.max_length (truncate_rows):
    the loss covers the completion (SQL + end of turn) only."""
    return SFTTrainer(
        model=model,
        args=sft_config(cfg, output_dir, device, report_to, run_name),
        train_dataset=truncate_rows(tokenized, cfg.train.max_length),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def warn_dense_padding_free(cfg: RunConfig, model, device: torch.device) -> None:
    """Logs a warning where train.padding_free meets an attention that builds a dense mask (sdpa,
    eager) on a GPU: every layer then attends over the whole joined micro-batch, masked. On an H200,
    4 layers of Llama-3.1-8B's shape over 32 rows of 300-900 tokens took 7-8x as long as padded rows
    under sdpa, and ~0.6x under flex_attention (bench/padding_free_attention.py, docs/benchmarks.md)."""
    name = model.config._attn_implementation
    if cfg.train.padding_free and torch.device(device).type == "cuda" and keeps_dense_mask(name):
        log.warning(
            "train.padding_free with %s attention attends over the whole joined micro-batch (masked): slower than "
            "padded rows at large micro-batches; model.attn_implementation=flex_attention keeps attention within rows", name,
        )


def use_deterministic_kernels() -> None:
    """Kernels that give bitwise the same result every run (cuBLAS with a fixed workspace, unsplit
    attention backward); call before the first matmul. torch then raises on an op that has none."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def data_stats(trainer: SFTTrainer, examples: int, max_length: int) -> dict:
    """What the trainer kept of the data. Long rows are truncated and rows whose prompt alone fills
    max_length are dropped (truncate_rows: nothing left to learn); neither may pass unnoticed.
    ``train_tokens`` counts the kept rows' tokens, padded or padding-free alike."""
    kept = trainer.train_dataset
    return {
        "train_examples": examples,
        "train_examples_used": len(kept),
        "train_examples_dropped_prompt_too_long": examples - len(kept),
        "train_examples_truncated": sum(len(ids) >= max_length for ids in kept["input_ids"]),
        "train_tokens": sum(len(ids) for ids in kept["input_ids"]),
    }


@dataclass
class WorkerSetup:
    """What a training worker holds before its trainer is built (worker_setup)."""

    cfg: RunConfig  # the `auto` settings filled by the memory plan
    plan: MemoryPlan | None  # None for a model without LLaMA's size names and no `auto` setting
    prompter: Prompter
    tokenizer: object
    train_set: object  # the SFT rows (datasets.Dataset)
    tokenized: object  # the same rows tokenized (tokenize_dataset)
    model: object  # the (4-bit) base with Liger's kernels where they apply, and LoRA
    liger: bool  # whether Liger's kernels were applied
    compiled_layers: int  # decoder layers compiled for training (train.compile_layers), else 0


def worker_setup(cfg: RunConfig, spider: Spider, device, gpu_share: float = 1.0) -> WorkerSetup:
    """A worker's steps from its config to a trainable model, in order: deterministic kernels and
    the seed, the training rows, the memory plan (before the model loads: the budget is enforced
    from there, and `auto` settings get their values), the base model, Liger's kernels, LoRA.
    Then, with train.compile_layers, the decoder layers compiled for training (instead of Liger's kernels).
    Shared by train_loop and bench/profile_train.py. Raises memory.DoesNotFit, ConfigError."""
    if cfg.train.deterministic:
        use_deterministic_kernels()
    set_seed(cfg.train.seed)
    prompter, tokenizer, train_set, tokenized = training_rows(cfg, spider)
    cfg, plan = plan_worker_memory(cfg, device, tokenized, gpu_share=gpu_share)
    log.info("memory plan: %s", plan)
    base = load_model(cfg.model, device=device)
    warn_dense_padding_free(cfg, base, device)
    liger = apply_liger_kernels(base, False if cfg.train.compile_layers else cfg.train.liger_kernel, device)  # config: not both
    model = apply_lora(base, cfg.lora)  # logs "trainable params: ..."
    compiled = compile_decoder_layers(model) if cfg.train.compile_layers else 0
    if compiled and torch.device(device).type != "cuda":
        log.warning("train.compile_layers on a %s worker: compiled steps there ran slower than eager ones (docs/benchmarks.md); "
                    "it is meant for GPUs", torch.device(device).type)
    return WorkerSetup(cfg, plan, prompter, tokenizer, train_set, tokenized, model, liger, compiled)


def train_loop(config: dict) -> dict:
    """The per-worker function. Gets a plain dict; returns history and data stats (Ray keeps rank 0's).
    With ``log_file`` in the dict, the worker's output goes there instead of the terminal; with
    ``progress_file``, rank 0 writes its step, loss and dev EX there (progress.py)."""
    with output_to(config["log_file"]) if config.get("log_file") else nullcontext():
        return _train_loop(config)


def _train_loop(config: dict) -> dict:
    from ray_spider.cli import configure_logging

    configure_logging()  # this is a fresh worker process
    started = time.perf_counter()
    start_s = round(time.time() - config["launched_at"], 1) if "launched_at" in config else None
    cfg = RunConfig.model_validate(config["run"])
    import ray.train.torch  # Ray

    device = ray.train.torch.get_device()  # Ray: this worker's GPU, or cpu
    resume_from = ray.train.get_checkpoint()  # Ray: the latest reported checkpoint when a failed run restarts
    spider = Spider(cfg.data.spider_dir)
    setup = worker_setup(cfg, spider, device, gpu_share=worker_gpu_share())
    cfg, plan = setup.cfg, setup.plan
    dev = scored_dev_examples(spider, cfg.data)
    callback = DevEvalCallback(cfg, setup.prompter, setup.tokenizer, dev, device)
    callback.start_s = start_s
    if config.get("progress_file") and callback.rank == 0:
        callback.progress = ProgressFile(config["progress_file"])
    report_to, run_name = tracking.apply(config.get("tracking"))
    with tempfile.TemporaryDirectory() as output_dir:
        callbacks = [callback, *([callback.progress] if callback.progress else [])]
        trainer = build_trainer(cfg, setup.model, setup.tokenizer, setup.tokenized, output_dir, device, callbacks, report_to, run_name)
        callback.trainer = trainer
        stats = data_stats(trainer, len(setup.train_set), cfg.train.max_length)
        if stats["train_examples_dropped_prompt_too_long"] or stats["train_examples_truncated"]:
            log.warning(
                "of %d examples, %d are truncated to train.max_length=%d and %d dropped (their prompt alone fills it); "
                "raise train.max_length to keep them",
                len(setup.train_set), stats["train_examples_truncated"], cfg.train.max_length, stats["train_examples_dropped_prompt_too_long"],
            )
        callback.setup_s = round(time.perf_counter() - started, 1)
        with resume_from.as_directory() if resume_from else nullcontext() as resume_dir:
            done = bool(resume_dir) and training_done(resume_dir)
            # Adapter, optimizer, scheduler, RNG and the position in the data, as at that step.
            try:
                runtime = 0.0 if done else trainer.train(resume_from_checkpoint=resume_dir).metrics["train_runtime"]
            except torch.OutOfMemoryError as exc:
                estimate = f", estimated {plan.estimate_train_gb} GB of a {plan.budget_gb} GB budget" if plan else ""
                raise TrainingMemoryError(
                    f"training ran out of GPU memory at micro-batch {cfg.train.per_device_batch_size}, gradient checkpointing "
                    f"{'on' if cfg.train.gradient_checkpointing else 'off'}, train.max_length {cfg.train.max_length}{estimate}; "
                    "set train.per_device_batch_size=auto and train.gradient_checkpointing=auto to plan from the GPU's memory "
                    "(memory.py), or lower the micro-batch or train.max_length"
                ) from exc
    train_seconds = runtime - callback.eval_seconds_in_loop
    speed = {
        "train_seconds": round(train_seconds, 2),  # optimizer work only, dev evaluation excluded
        "dev_eval_s": round(callback.eval_seconds, 2),
        "train_tokens_seen": callback.tokens_seen,  # non-pad, all workers (TRL gathers them)
        "train_tokens_per_s": round(callback.tokens_seen / train_seconds, 1) if train_seconds > 0 else None,
    }
    kernels = torch.are_deterministic_algorithms_enabled()
    memory = {
        "memory_plan": plan.as_dict() if plan else None,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "liger_kernel": setup.liger,
        "compiled_layers": setup.compiled_layers,
        **peak_memory(callback.history),
        **allocator_retries(device),
    }
    return {"history": callback.history, "data": {**stats, **speed, **memory, "deterministic_kernels": kernels}}


def peak_memory(history: list[dict]) -> dict:
    """The highest GPU peaks of this worker over the run's rounds, in GB (none off CUDA)."""
    peaks = {}
    for key in ("gpu_peak_gb_train", "gpu_peak_gb_dev"):
        values = [row[key] for row in history if row.get(key) is not None]
        if values:
            peaks[key] = max(values)
    return peaks


def allocator_retries(device: torch.device) -> dict:
    """How often the CUDA caching allocator ran out, freed its cache and retried (each retry waits for
    the GPU): a count that grows step after step means the memory budget is too tight for this
    micro-batch. Empty off CUDA."""
    if torch.device(device).type != "cuda":
        return {}
    return {"gpu_alloc_retries": torch.cuda.memory_stats(device).get("num_alloc_retries", 0)}


def training_done(checkpoint_dir: str | os.PathLike) -> bool:
    """Log the step a reported checkpoint was saved at (its trainer_state.json) and say whether it is the
    run's last (global_step >= max_steps), as when a sweep is stopped after a trial's final round but
    before the trial ended. transformers' Trainer resumed from it trains one step more (it checks
    max_steps only after a step), so the worker then trains nothing: that round is already reported."""
    state = json.loads((Path(checkpoint_dir) / TRAINER_STATE_NAME).read_text())
    log.info("resuming from the checkpoint of step %d", state["global_step"])
    if state["global_step"] >= state["max_steps"] > 0:
        log.info("the checkpoint of step %d is the last one: nothing left to train", state["global_step"])
        return True
    return False


def start_ray(log_to_driver: bool = True) -> None:
    """Connect to Ray, starting a local cluster when none runs, with WORKER_ENV everywhere.

    Ray's rule picks the cluster: $RAY_ADDRESS, else the last one `ray start` left on this host, else a
    new local one (RAY_ADDRESS=local forces that). Joining an existing cluster is said on stderr,
    since its resources and other jobs are then shared."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)  # the driver's children (Ray's local cluster) inherit them
    if ray.is_initialized():
        return
    existing = canonicalize_bootstrap_address(None)  # Ray's own lookup, the one ray.init makes next (only said here)
    ray.init(
        runtime_env={"env_vars": WORKER_ENV}, include_dashboard=False,
        log_to_driver=log_to_driver, logging_level=logging.INFO if log_to_driver else logging.WARNING,
    )
    stop_on_sigterm_as_on_ctrl_c()  # ray.init answers SIGTERM with sys.exit: no clean-up of the run
    if existing:
        source = "$RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "the cluster `ray start` left on this host"
        print(f"joined the Ray cluster at {existing} ({source}; RAY_ADDRESS=local starts a private one)", file=sys.stderr)


def torch_trainer(
    cfg: RunConfig, storage_path: str, name: str, gpus_per_worker: float | None = None, storage_filesystem=None, callbacks=(),
    worker_files: dict | None = None, tracking: dict | None = None,
):
    """The Ray Train job of one run: ``train_loop`` on cfg.train.num_workers workers, best checkpoints by dev EX;
    ``tracking``: tracking.worker_tracking's dict (None: no trackers)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    use_gpu = cfg.train.use_gpu if cfg.train.use_gpu is not None else bool(ray.cluster_resources().get("GPU"))
    worker = {"CPU": cfg.train.cpus_per_worker}
    if use_gpu:
        worker["GPU"] = gpus_per_worker or 1  # a fraction lets several trials share one GPU
    return TorchTrainer(
        train_loop,
        # fit() follows at once; worker_files: log_file (and progress_file) of a `train` run or a sweep trial (progress.py)
        train_loop_config={"run": cfg.model_dump(mode="json"), "launched_at": time.time(), "tracking": tracking, **(worker_files or {})},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu, resources_per_worker=worker),
        run_config=RayRunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints, checkpoint_score_attribute="dev_ex", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=0),  # retries are the sweep's (trial_retries)
            callbacks=list(callbacks),
        ),
    )


def fit(cfg: RunConfig, storage_path: str, name: str, worker_files: dict | None = None, tracking: dict | None = None):
    """Launch the Ray Train job (starting a local Ray when none runs) and return Ray's Result. With
    ``worker_files`` (log_file, progress_file) the workers' output goes to the log, not the terminal.
    A UserError raised in a worker (``worker_user_error``) is raised here as one."""
    from ray.train import TrainingFailedError  # Ray

    start_ray(log_to_driver=not worker_files)
    trainer = torch_trainer(cfg, storage_path, name, worker_files=worker_files, tracking=tracking)
    try:
        return trainer.fit()
    except SystemExit:
        # Ray Train's SIGINT handler aborts the run, then ends the driver with sys.exit(0): a Ctrl-C.
        raise KeyboardInterrupt from None
    except TrainingFailedError as exc:
        mistake = worker_user_error(exc)
        if mistake is None:
            raise
        raise UserError(str(mistake)) from exc


class TrainingMemoryError(UserError):
    """A training step ran out of GPU memory; the message names the settings that decide it."""


def worker_user_error(error: BaseException) -> UserError | None:
    """The UserError a training worker raised (a budget that fits nothing, a training step out of GPU
    memory), found in Ray Train's WorkerGroupError (``worker_failures``, each maybe wrapped as a
    RayTaskError with ``cause``); None when the failure is something else."""
    failures = list(getattr(error, "worker_failures", {}).values()) or [error]
    for failure in failures:
        for candidate in (failure, getattr(failure, "cause", None), failure.__cause__):
            if isinstance(candidate, UserError):
                return candidate
    return None


def check_local_gpus(gpus: float, asked: str, instead: str) -> None:
    """Raise ConfigError when a run asks for ``gpus`` GPUs in all (``asked`` names the settings) and this
    machine has fewer while the run will start its own local Ray cluster: Ray would keep its workers
    pending forever. ``instead`` says what to set. A running cluster ($RAY_ADDRESS, or one `ray start`
    left) is not checked: an autoscaler may add GPU nodes (tune.no_gpu_warning then says so)."""
    from ray._private.services import canonicalize_bootstrap_address  # Ray's own lookup, as start_ray's ray.init

    if gpus <= 0 or canonicalize_bootstrap_address(None):
        return
    if torch.cuda.device_count() < gpus:
        raise ConfigError(f"{asked} needs {gpus:g} GPU(s), and this machine has {torch.cuda.device_count()} that torch sees; {instead}")


def check_attention_trains(cfg: RunConfig, on_gpu: bool) -> None:
    """Raise ConfigError for flex_attention training off a GPU: FlexAttention has no backward on CPU
    (torch 2.13), which a worker would find only after loading the model."""
    if not on_gpu and "flex" in (cfg.model.attn_implementation or ""):
        raise ConfigError(
            f"model.attn_implementation={cfg.model.attn_implementation} with train.use_gpu=false: FlexAttention has no backward "
            "on CPU; train on a GPU, or leave model.attn_implementation unset (sdpa)"
        )


def run_training(cfg: RunConfig, command: str) -> Path:
    """The `train` command: fit, then fill the run folder (records.RunFolder) with the best adapter."""
    from ray_spider.records import RunFolder, best_round, metrics_by_step

    check_attention_trains(cfg, on_gpu=bool(cfg.train.use_gpu))
    check_local_gpus(
        cfg.train.num_workers if cfg.train.use_gpu else 0, f"train.use_gpu=true with train.num_workers={cfg.train.num_workers}",
        "set train.use_gpu=false (CPU), leave it unset (a GPU when there is one)" + (", or give fewer workers" if cfg.train.num_workers > 1 else ""),
    )
    spider = Spider(cfg.data.spider_dir)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"spider_dir": str(spider.root.resolve())})})
    run = RunFolder.create(cfg)
    started = time.time()
    files = {"log_file": str(run.path / LOG_FILE), "progress_file": str(run.path / PROGRESS_FILE)}
    trackers = tracking.worker_tracking(cfg, str(run.path / tracking.TENSORBOARD_DIR), run_name=run.path.name)
    with run.removed_if_interrupted("training stopped"), show_progress(files["progress_file"]):
        result = fit(cfg, storage_path=str(run.path / "ray"), name="train", worker_files=files, tracking=trackers)
    Path(files["progress_file"]).unlink(missing_ok=True)
    if result.error:
        raise RuntimeError(f"training failed; the workers' output is in {files['log_file']}, Ray's files under {run.path / 'ray'}") from result.error
    returned = result.return_value or {}
    history = metrics_by_step(returned.get("history", []))
    rounds = [metrics for _, metrics in result.best_checkpoints or []]
    best = best_round(rounds)
    info = {"wall_s": time.time() - started, "last_step": max((row["step"] for row in history), default=0), **returned.get("data", {})}
    if best:
        checkpoint = next(ckpt for ckpt, metrics in result.best_checkpoints if metrics["step"] == best["step"])
        with checkpoint.as_directory() as directory:
            run.save_best_checkpoint(Path(directory))
        info["best_step"] = best["step"]
        info["best_dev_ex"] = best["dev_ex"]
    run.save_history(history)
    run.finish(Prompter(spider, cfg.prompt).version, command, **info)
    return run.path
