"""Benchmark: training throughput of `ray-spider train` (TRL's SFTTrainer inside a Ray Train worker)
beside a plain TRL script with no Ray (same model, data, batch, accumulation, max_length,
quantization, LoRA, seed), in one run.

    SPIDER_DIR=../shared/spider python bench/bench_train.py                     # CPU default, a few minutes
    SPIDER_DIR=../shared/spider python bench/bench_train.py --device cuda \
        --steps 20 --batch-size 16 --accumulation 4 --max-length 2048           # H200: the qlora_r16 shape
    SPIDER_DIR=../shared/spider python bench/bench_train.py --steps 2 --batch-size 8 --accumulation 4 \
        --ray-batch-size 32 --ray-accumulation 1 --ray-set train.padding_free=true   # Ray side: padding-free 32 x 1

Both sides train one epoch over the first N = steps x batch x accumulation Spider train examples,
each rendered by ray_spider's Prompter. Throughput is non-pad tokens / train seconds:

- tokens: the token count of every row the trainer kept after truncation to max_length (each
  row is trained exactly once; pad tokens never count, padded or with ``--ray-set
  train.padding_free=true``). Cross-checked against TRL's own cumulative ``num_tokens`` in its last
  log line (the attention-mask ones of padded batches, the joined row's length of padding-free ones).
- train seconds: the HF trainer's own ``train_runtime`` on both sides: from the first batch to
  the last optimizer step, without model loading, Ray start-up or the dev evaluation. The Ray run
  sets ``train.eval_every_steps`` above the step count, so its only dev round is the final one,
  which ``DevEvalCallback.on_train_end`` runs after ``train_runtime`` is taken. ``train_runtime``
  and the tokens come from the run's ``manifest.json`` (``train_seconds`` = train_runtime less
  in-loop dev rounds; ``train_tokens``); the worker's final log line (TRL prints every log dict
  with ``disable_tqdm``, into the run folder's train.log) gives the same train_runtime.

Per-step clocks: both sides record, at every logged step, the tokens and seconds of training so far
(the product in its metrics.parquet, ``tokens_seen`` and ``train_elapsed_s``; the plain side with a
callback that clocks the same way), and the bench prints both sides' tokens/s over the first 30 steps
of a longer run and over the steps after the first ``--steady-after`` (2: compilation behind), beside
the whole-run figures. A window needs both sides to have logged its first and last steps.

Threads: a Ray worker gets OMP_NUM_THREADS = its CPUs, so ``train.cpus_per_worker`` is set to
``--threads`` and the plain script calls ``torch.set_num_threads(--threads)``: same cores on both.
The default is 1: on a shared 2-core machine two OpenMP threads that lose their cores to other
processes wait at every barrier, and a step took 3-10x longer than with one thread.
Prints tokens/s of each and the ratio Ray / plain (1.00 = no overhead); figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from transformers import TrainerCallback

from ray_spider.config import RunConfig, load_run_config
from ray_spider.errors import UserError
from ray_spider.model import check_model_spec, resolve_model
from ray_spider.progress import LOG_FILE

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = "sweeps/smoke_cpu.yaml"
# The trainer's final log line as PrinterCallback prints it: {'train_runtime': '94.38', ...}
TRAIN_RUNTIME = re.compile(r"'train_runtime': '?([0-9.eE+-]+)'?")
RESULT_PREFIX = "PLAIN_RESULT "


def overrides(args, output_dir: str, ray_side: bool = True) -> list[str]:
    """The `ray-spider train` overrides that give the run the benchmark's shape (+ --ray-set on the Ray side)."""
    examples = args.steps * args.batch_size * args.accumulation
    if args.ray_batch_size == "auto":  # the worker picks the micro-batch; the effective batch stays the plain side's
        ray_batch, effective = "auto", args.batch_size * args.accumulation
    else:
        ray_batch = int(args.ray_batch_size or args.batch_size)
        effective = ray_batch * (args.ray_accumulation or args.accumulation)
    ray_steps = examples // effective
    return [
        f"output_dir={output_dir}",
        "name=bench-train",
        f"model.name={args.model}",
        f"model.quantization={args.quantization}",
        f"train.max_steps={ray_steps}",
        "train.epochs=1",
        f"train.per_device_batch_size={ray_batch}",
        f"train.effective_batch_size={effective}",
        f"train.group_by_length={str(args.ray_group_by_length).lower()}",
        f"train.max_length={args.max_length}",
        f"train.logging_steps={args.logging_steps}",
        f"train.eval_every_steps={ray_steps + 1}",  # no dev round inside the timed loop
        "train.num_workers=1",
        f"train.use_gpu={str(args.device == 'cuda').lower()}",
        f"train.cpus_per_worker={args.threads}",
        f"data.max_train_examples={examples}",
        "data.dev_subset=1",  # the final dev round is not timed: keep it short
        "generation.max_new_tokens=8",
        "eval.workers=1",
        *(args.ray_set if ray_side else []),
    ]


def run_ray(args) -> dict:
    """`ray-spider train` in a subprocess; train_runtime from its log, tokens from its manifest."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as output_dir:
        command = [sys.executable, "-m", "ray_spider", "train", BASE_CONFIG, *overrides(args, output_dir)]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        # The trainer's log lines are the workers' output: in the run folder's train.log, not on the terminal.
        worker_logs = [path.read_text() for path in Path(output_dir).glob(f"bench-train-*/{LOG_FILE}")]
        log = result.stdout + result.stderr + "".join(worker_logs)
        runtimes = TRAIN_RUNTIME.findall(log)
        raise_if_interrupted(result.returncode)
        if result.returncode or not runtimes:
            sys.stderr.write(log[-6000:])
            raise SystemExit(f"ray-spider train failed (exit {result.returncode}): {shlex.join(command)}")
        (manifest_path,) = Path(output_dir).glob("bench-train-*/manifest.json")
        manifest = json.loads(manifest_path.read_text())
        metrics = pq.read_table(manifest_path.parent / "metrics.parquet").to_pylist()
    # TRL's own count at the last step: in metrics.parquet (train.log prints it to 4 significant figures)
    clock = [[row["step"], row["tokens_seen"], row["train_elapsed_s"]] for row in metrics if row.get("train_elapsed_s") is not None]
    # The run's own record (train_runtime less any in-loop dev rounds) where the package writes it;
    # else the trainer's train_runtime from the log (equal here: no dev round runs inside the loop).
    return {
        "train_s": manifest.get("train_seconds", float(runtimes[-1])),
        "logged_train_runtime": float(runtimes[-1]),
        "tokens": manifest["train_tokens"],
        "logged_tokens": int(clock[-1][1]) if clock and clock[-1][1] is not None else None,
        "examples": manifest["train_examples_used"],
        "truncated": manifest["train_examples_truncated"],
        "wall_s": wall,
        "peak_gb": manifest.get("gpu_peak_gb_train"),
        "micro_batch": manifest.get("memory_plan", {}).get("micro_batch"),
        "checkpointing": manifest.get("memory_plan", {}).get("gradient_checkpointing"),
        "liger": manifest.get("liger_kernel"),
        "alloc_retries": manifest.get("gpu_alloc_retries"),
        "clock": clock,
    }


class StepClock(TrainerCallback):
    """The plain side's [step, tokens so far, seconds so far] at every logged step, clocked as the
    product's records do (ray_spider.train.DevEvalCallback.on_log: after the loss's .item())."""

    def __init__(self):
        self.rows, self.started = [], 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:  # the last step is clocked whatever logging_steps, as the product's
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.rows.append([state.global_step, logs.get("num_tokens"), round(time.perf_counter() - self.started, 3)])


def window_rate(clock: list[list], after: int, through: int) -> float | None:
    """Tokens/s over optimizer steps after..through (after 0: from the start) from a side's clock rows
    [step, tokens so far, seconds so far]; None when the clock lacks either step or any tokens."""
    by_step = {step: (tokens, seconds) for step, tokens, seconds in clock}
    start = (0.0, 0.0) if after == 0 else by_step.get(after)
    end = by_step.get(through)
    if start is None or end is None or None in (*start, *end) or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


def window_median(runs: list[dict], after: int, through: int) -> float | None:
    """The median of window_rate over a side's repeats that clocked the window; None when none did."""
    rates = [rate for rate in (window_rate(run["clock"], after, through) for run in runs) if rate is not None]
    return statistics.median(rates) if rates else None


def step_windows(steps: int, steady_after: int) -> list[tuple[str, int, int]]:
    """(label, after, through) of the step windows the clocks are also read over: the first 30 steps of
    a longer run (the shortest bench this project reports a ratio for) and the steps after the first
    ``steady_after`` (warm: compilation and caches behind)."""
    windows = [(f"steps 1-30 of {steps}", 0, 30)] if steps > 30 else []
    if 0 < steady_after < steps:
        steps_label = f"step {steps}" if steady_after + 1 == steps else f"steps {steady_after + 1}-{steps}"
        windows.append((f"{steps_label} (warm)", steady_after, steps))
    return windows


def raise_if_interrupted(returncode: int) -> None:
    """A side's child stopped by Ctrl-C (exit 130, or killed by SIGINT) stops the bench too."""
    if returncode in (130, -signal.SIGINT):
        raise KeyboardInterrupt


def run_plain_process(args, extra: tuple[str, ...] = ()) -> dict:
    """run_plain in a fresh process with the thread env a Ray worker gets (OMP_NUM_THREADS = its CPUs)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--plain-child", *sys.argv[1:], *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    raise_if_interrupted(result.returncode)
    if result.returncode or not lines:
        sys.stderr.write((result.stdout + result.stderr)[-6000:])
        raise SystemExit(f"the plain TRL run failed (exit {result.returncode}): {shlex.join(command)}")
    return {**json.loads(lines[-1][len(RESULT_PREFIX) :]), "wall_s": time.perf_counter() - started}


def run_plain(args, cfg: RunConfig) -> dict:
    """The plain TRL way: load, wrap in LoRA, SFTTrainer on prompt/completion rows, train. No Ray."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from ray_spider.data import train_examples
    from ray_spider.prompt import Prompter
    from ray_spider.spider import Spider

    torch.set_num_threads(args.threads)
    spider = Spider(cfg.data.spider_dir)
    prompter = Prompter(spider, cfg.prompt)
    rows = []
    for example in train_examples(spider, cfg.data):
        messages = prompter.conversation(example.db_id, example.question, example.query)
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    device = "cuda:0" if args.device == "cuda" else "cpu"
    bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantization = None
    if args.quantization == "nf4":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization, device_map={"": device})
    model.config.use_cache = False
    if args.plain_liger:  # the untimed warm-up only: compiles Liger's kernels for the Ray side's first steps
        from ray_spider.model import apply_liger_kernels

        apply_liger_kernels(model, "auto", device)
    lora = cfg.lora
    model = get_peft_model(
        model,
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
    )
    train = cfg.train
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as output_dir:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=output_dir,
                learning_rate=train.learning_rate,
                num_train_epochs=1,
                max_steps=args.steps,  # the plain side keeps --batch-size/--accumulation (the reference shape)
                per_device_train_batch_size=args.batch_size,
                gradient_accumulation_steps=args.accumulation,
                lr_scheduler_type=train.lr_scheduler,
                warmup_steps=train.warmup_ratio,
                max_length=train.max_length,
                completion_only_loss=True,
                gradient_checkpointing=train.gradient_checkpointing,
                bf16=bf16,
                use_cpu=args.device == "cpu",
                seed=train.seed,
                data_seed=train.seed,
                logging_steps=train.logging_steps,
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[clock],
        )
        output = trainer.train()
    logged_tokens = [row["num_tokens"] for row in trainer.state.log_history if "num_tokens" in row]
    kept = trainer.train_dataset["input_ids"]
    return {
        "train_s": output.metrics["train_runtime"],
        "tokens": sum(len(ids) for ids in kept),
        "logged_tokens": int(logged_tokens[-1]) if logged_tokens else None,
        "examples": len(kept),
        "truncated": sum(len(ids) >= train.max_length for ids in kept),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if args.device == "cuda" else None,
        "alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0) if args.device == "cuda" else None,
        "clock": clock.rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model spec, as model.name")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (one epoch of steps x batch x accumulation examples)")
    parser.add_argument("--batch-size", type=int, default=2, help="per-device batch size")
    parser.add_argument("--accumulation", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--quantization", choices=["nf4", "none"], default="nf4")
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each side (Ray: train.cpus_per_worker)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating Ray/plain pairs; medians are reported")
    parser.add_argument("--ray-batch-size", default=None, help="Ray side's per-device batch, or auto (default: --batch-size)")
    parser.add_argument("--ray-accumulation", type=int, default=None, help="Ray side's accumulation (default: --accumulation)")
    parser.add_argument("--ray-group-by-length", action="store_true", help="Ray side batches similar lengths together")
    parser.add_argument(
        "--warmup-steps", type=int, default=0,
        help="first an untimed plain run of N steps: kernels compiled on first use (TRL's Triton loss on a GPU) are "
        "cached on disk, so neither timed side pays for compiling them (else the side that runs first does)",
    )
    parser.add_argument(
        "--ray-warmup-steps", type=int, default=0,
        help="first an untimed Ray-side run of N optimizer steps: what the product compiles on first use "
        "(flex_attention's kernels) lands in torch's on-disk caches, so the timed run does not pay for it",
    )
    parser.add_argument(
        "--ray-set", action="append", default=[], metavar="KEY=VALUE",
        help="a run-config override for the Ray side only, e.g. train.gpu_memory_gb=48 (repeatable)",
    )
    parser.add_argument(
        "--steady-after", type=int, default=2,
        help="also report both sides' tokens/s over the steps after the first N, from their per-step clocks (0: not)",
    )
    parser.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain-liger", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steady_after < 0:
        parser.error(f"--steady-after {args.steady_after}: a number of steps, 0 or more")

    try:  # a mistake in the options is one line and exit 2 before either side starts, as `ray-spider train` says it
        cfg = load_run_config(ROOT / BASE_CONFIG, overrides(args, "unused", ray_side=False))
        load_run_config(ROOT / BASE_CONFIG, overrides(args, "unused"))  # the Ray side's --ray-set too
        check_model_spec(args.model)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.plain_child:  # the plain side, in its own process like the Ray worker
        print(RESULT_PREFIX + json.dumps(run_plain(args, cfg)), flush=True)
        return
    examples = args.steps * args.batch_size * args.accumulation
    print(f"ray-spider train {BASE_CONFIG} " + shlex.join(overrides(args, "<tmp>")), flush=True)
    if args.warmup_steps:
        warmup = run_plain_process(args, ("--steps", str(args.warmup_steps), "--warmup-steps", "0", "--plain-liger"))
        print(f"  warm-up (untimed): plain, {args.warmup_steps} steps, {warmup['wall_s']:.1f} s", flush=True)
    if args.ray_warmup_steps:
        warmup = run_ray(argparse.Namespace(**{**vars(args), "steps": args.ray_warmup_steps}))
        print(f"  warm-up (untimed): ray-spider train, {args.ray_warmup_steps} steps, {warmup['wall_s']:.1f} s", flush=True)
    ray_runs, plain_runs = [], []
    sides = [("ray", run_ray, ray_runs), ("plain", run_plain_process, plain_runs)]
    for repeat in range(args.repeats):
        for name, run, runs in sides if repeat % 2 == 0 else sides[::-1]:  # alternate the order against drift
            runs.append(run(args))
            print(f"  [{repeat + 1}/{args.repeats}] {name:5s} {({k: v for k, v in runs[-1].items() if k != 'clock'})}", flush=True)
            print(f"  [{repeat + 1}/{args.repeats}] {name:5s} clock [step, tokens, s]: {json.dumps(runs[-1]['clock'])}", flush=True)
    for name, runs in (("ray", ray_runs), ("plain", plain_runs)):
        logged = runs[-1]["logged_tokens"]
        if logged is not None and logged != runs[-1]["tokens"]:
            print(f"  note: {name} trained {runs[-1]['tokens']} tokens by the dataset, TRL logged {logged}")

    def median(runs, key):
        return statistics.median(run[key] for run in runs)

    ray_rate = median(ray_runs, "tokens") / median(ray_runs, "train_s")
    plain_rate = median(plain_runs, "tokens") / median(plain_runs, "train_s")
    print(
        f"\n{args.model} {args.quantization}, {args.steps} steps x batch {args.batch_size} x accumulation {args.accumulation} "
        f"= {examples} examples, max_length {args.max_length}, {args.device}, {args.threads} threads, "
        f"torch {torch.__version__}, median of {args.repeats}"
    )
    for name, runs, rate in (("ray-spider train (Ray Train)", ray_runs, ray_rate), ("plain TRL script (no Ray)", plain_runs, plain_rate)):
        print(
            f"  {name:30s}: {median(runs, 'tokens'):8.0f} tokens in {median(runs, 'train_s'):7.2f} s train = {rate:8.1f} tokens/s"
            f"   (end to end {median(runs, 'wall_s'):6.1f} s, peak {runs[-1].get('peak_gb')} GB)"
        )
    last = ray_runs[-1]
    if last.get("micro_batch") is not None:
        print(f"  Ray side: micro-batch {last['micro_batch']}, gradient checkpointing {last['checkpointing']}, Liger kernels {last['liger']}")
    print(f"  ratio Ray / plain tokens/s    : {ray_rate / plain_rate:8.3f}")
    ray_steps = ray_runs[-1]["clock"][-1][0] if ray_runs[-1]["clock"] else 0
    windows = step_windows(args.steps, args.steady_after)
    if windows and ray_steps != args.steps:  # a step is then not the same examples on both sides
        print(f"  (no step windows: the Ray side ran {ray_steps} optimizer steps of another effective batch, the plain side {args.steps})")
        windows = []
    if args.steady_after >= args.steps:
        print(f"  (no warm window: --steady-after {args.steady_after} leaves none of the {args.steps} steps)")
    for label, after, through in windows:
        rates = [window_median(runs, after, through) for runs in (ray_runs, plain_runs)]
        if None in rates:
            print(f"  {label:30s}: not clocked (a side logged no step {after}: --logging-steps {args.logging_steps})")
        else:
            print(f"  {label:30s}: {rates[0]:8.1f} vs {rates[1]:8.1f} tokens/s, ratio {rates[0] / rates[1]:6.3f}")
    print("  (end to end = the whole process; Ray's also starts Ray and runs the final dev round and the run records)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # each side writes only into temporary folders, which are gone
        print("interrupted: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
