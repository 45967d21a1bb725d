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
import tempfile
from contextlib import nullcontext
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from ray_spider.config import RunConfig
from ray_spider.data import build_sft_dataset, scored_dev_examples, train_examples
from ray_spider.model import MergedCopy, apply_lora, load_model, load_tokenizer, resolve_model
from ray_spider.predict import PredictionResult, generate_raw, score_outputs
from ray_spider.prompt import Prompter, tokenize_example
from ray_spider.spider import Spider

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


def sft_config(cfg: RunConfig, output_dir: str, device: torch.device) -> SFTConfig:
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
        max_length=train.max_length,
        completion_only_loss=True,  # loss on the assistant SQL and its end-of-turn token only
        packing=False,
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
        report_to=[],
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
        self.setup_s: float | None = None  # from there to the first step: model, data, tokenizing
        self.steps_started = 0.0  # when the optimizer steps since the last round began

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.tokens_seen = float(logs["num_tokens"])  # TRL's running count of non-pad tokens trained on
        if logs and "loss" in logs:
            self.history.append({"step": state.global_step, "epoch": state.epoch, "train_loss": float(logs["loss"]), "learning_rate": logs.get("learning_rate")})

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        # A dev round is taken right after the Trainer saves its state (on_save): the checkpoint
        # Ray keeps is then the adapter with everything a retried trial resumes from.
        if state.global_step % self.cfg.train.eval_every_steps == 0 or state.global_step >= state.max_steps:
            control.should_save = True

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
            model, self.tokenizer, self.prompter, shard, self.cfg.generation, self.rank == 0, self.cfg.eval.query_timeout_s
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
        peaks["gpu_peak_gb_dev"] = take_peak_memory_gb(self.device)
        result = score_outputs(self.prompter.spider, self.dev, raw, self.cfg.eval, progress=False) if self.rank == 0 else None
        self.eval_seconds += time.perf_counter() - started
        measured = {"train_s": steps_s, **{key: gb for key, gb in peaks.items() if gb is not None}}
        metrics = self._round_metrics(state, result, measured)
        if self.world > 1:
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                if trainer_checkpoint is not None:
                    shutil.copytree(trainer_checkpoint, tmp, dirs_exist_ok=True)
                model.save_pretrained(tmp)  # PEFT format: adapter_config.json + adapter_model.safetensors
                result.write(Path(tmp) / "dev_eval")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            report = {**metrics, PLACEMENT_GROUP_METRIC: worker_placement_group_id()}
            ray.train.report(report, checkpoint=checkpoint)  # Ray: every worker reports, rank 0 checkpoints
        self.steps_started = time.perf_counter()

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


PLACEMENT_GROUP_METRIC = "placement_group"  # reported each round: a sweep frees it when Tune stops the trial


def worker_placement_group_id() -> str | None:
    """Hex id of the placement group holding this Ray Train worker's resources (None outside Ray)."""
    import ray

    group = ray.util.get_current_placement_group() if ray.is_initialized() else None
    return group.id.hex() if group else None


def build_trainer(cfg: RunConfig, model, tokenizer, train_set, output_dir: str, device, callbacks=()) -> SFTTrainer:
    """TRL's SFTTrainer on pre-tokenized rows: the loss covers the completion (SQL + end of turn) only."""
    tokenized = train_set.map(tokenize_example, fn_kwargs={"tokenizer": tokenizer}, remove_columns=train_set.column_names)
    return SFTTrainer(
        model=model,
        args=sft_config(cfg, output_dir, device),
        train_dataset=tokenized,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def use_deterministic_kernels() -> None:
    """Kernels that give bitwise the same result every run (cuBLAS with a fixed workspace, unsplit
    attention backward); call before the first matmul. torch then raises on an op that has none."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def data_stats(trainer: SFTTrainer, examples: int, max_length: int) -> dict:
    """What the trainer kept of the data. TRL truncates long rows and drops rows whose prompt alone
    fills max_length (nothing left to learn); neither may pass unnoticed."""
    kept = trainer.train_dataset
    return {
        "train_examples": examples,
        "train_examples_used": len(kept),
        "train_examples_dropped_prompt_too_long": examples - len(kept),
        "train_examples_truncated": sum(len(ids) >= max_length for ids in kept["input_ids"]),
        "train_tokens": sum(len(ids) for ids in kept["input_ids"]),
    }


def train_loop(config: dict) -> dict:
    """The per-worker function. Gets a plain dict; returns history and data stats (Ray keeps rank 0's)."""
    from ray_spider.cli import configure_logging

    configure_logging()  # this is a fresh worker process
    started = time.perf_counter()
    start_s = round(time.time() - config["launched_at"], 1) if "launched_at" in config else None
    cfg = RunConfig.model_validate(config["run"])
    import ray.train.torch  # Ray

    device = ray.train.torch.get_device()  # Ray: this worker's GPU, or cpu
    resume_from = ray.train.get_checkpoint()  # Ray: the latest reported checkpoint when a failed run restarts
    if cfg.train.deterministic:
        use_deterministic_kernels()
    set_seed(cfg.train.seed)
    spider = Spider(cfg.data.spider_dir)
    prompter = Prompter(spider, cfg.prompt)
    tokenizer = load_tokenizer(resolve_model(cfg.model.name))
    model = apply_lora(load_model(cfg.model, device=device), cfg.lora)  # logs "trainable params: ..."
    train_set = build_sft_dataset(prompter, train_examples(spider, cfg.data))
    dev = scored_dev_examples(spider, cfg.data)
    callback = DevEvalCallback(cfg, prompter, tokenizer, dev, device)
    callback.start_s = start_s
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(cfg, model, tokenizer, train_set, output_dir, device, [callback])
        stats = data_stats(trainer, len(train_set), cfg.train.max_length)
        if stats["train_examples_dropped_prompt_too_long"] or stats["train_examples_truncated"]:
            log.warning(
                "of %d examples, %d are truncated to train.max_length=%d and %d dropped (their prompt alone fills it); "
                "raise train.max_length to keep them",
                len(train_set), stats["train_examples_truncated"], cfg.train.max_length, stats["train_examples_dropped_prompt_too_long"],
            )
        callback.setup_s = round(time.perf_counter() - started, 1)
        with resume_from.as_directory() if resume_from else nullcontext() as resume_dir:
            if resume_dir:
                log.info("resuming from the checkpoint of step %d", resumed_step(resume_dir))
            # Adapter, optimizer, scheduler, RNG and the position in the data, as at that step.
            runtime = trainer.train(resume_from_checkpoint=resume_dir).metrics["train_runtime"]
    train_seconds = runtime - callback.eval_seconds_in_loop
    speed = {
        "train_seconds": round(train_seconds, 2),  # optimizer work only, dev evaluation excluded
        "dev_eval_s": round(callback.eval_seconds, 2),
        "train_tokens_seen": callback.tokens_seen,  # non-pad, all workers (TRL gathers them)
        "train_tokens_per_s": round(callback.tokens_seen / train_seconds, 1) if train_seconds > 0 else None,
    }
    kernels = torch.are_deterministic_algorithms_enabled()
    return {"history": callback.history, "data": {**stats, **speed, "deterministic_kernels": kernels}}


def resumed_step(checkpoint_dir: str | os.PathLike) -> int:
    """The optimizer step a reported checkpoint was saved at (its trainer_state.json)."""
    return json.loads((Path(checkpoint_dir) / TRAINER_STATE_NAME).read_text())["global_step"]


def start_ray() -> None:
    """Connect to Ray, starting a local cluster when none runs, with WORKER_ENV everywhere."""
    import ray

    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)  # the driver's children (Ray's local cluster) inherit them
    if not ray.is_initialized():
        ray.init(runtime_env={"env_vars": WORKER_ENV}, include_dashboard=False)


def torch_trainer(cfg: RunConfig, storage_path: str, name: str, gpus_per_worker: float | None = None, storage_filesystem=None, callbacks=()):
    """The Ray Train job of one run: ``train_loop`` on cfg.train.num_workers workers, best checkpoints by dev EX."""
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
        train_loop_config={"run": cfg.model_dump(mode="json"), "launched_at": time.time()},  # fit() follows at once
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


def fit(cfg: RunConfig, storage_path: str, name: str):
    """Launch the Ray Train job (starting a local Ray when none runs) and return Ray's Result."""
    start_ray()
    return torch_trainer(cfg, storage_path, name).fit()


def run_training(cfg: RunConfig, command: str) -> Path:
    """The `train` command: fit, then fill the run folder (records.RunFolder) with the best adapter."""
    from ray_spider.records import RunFolder, best_round, metrics_by_step

    spider = Spider(cfg.data.spider_dir)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"spider_dir": str(spider.root.resolve())})})
    run = RunFolder.create(cfg)
    started = time.time()
    result = fit(cfg, storage_path=str(run.path / "ray"), name="train")
    if result.error:
        raise RuntimeError(f"training failed; Ray's logs are under {run.path / 'ray'}") from result.error
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
