"""Where an optimizer step of `ray-spider train` spends its time: the worker's own setup
(`train.worker_setup`: memory plan, model, Liger, LoRA) and TRL's SFTTrainer (`train.build_trainer`),
without Ray around them or dev rounds, a few optimizer steps under torch.profiler after warm-up steps.

    python bench/profile_train.py sweeps/qlora_llama31_8b.yaml model.name=SHAPE_DIR train.gpu_memory_gb=48 \
        train.padding_free=true model.attn_implementation=flex_attention --warmup 3 --steps 2
    python bench/profile_train.py sweeps/smoke_cpu.yaml --warmup 1 --steps 1        # CPU: a minute

Prints the wall time of each warm-up step (compilation shows in the first ones) and where torch.compile's
time went (tracing, AOTAutograd, inductor; cache hits, and why AOTAutograd bypassed its cache), then, per profiled
optimizer step: wall seconds (the GPU synchronized at both ends), how long
CUDA kernels ran (the union of their intervals) and so how long the GPU sat idle, the kernel
count, the synchronize calls the CPU waited in, the kernel time by kind (matmul, 4-bit
dequantize, attention, Liger's kernels, ...), and the ops with the most device time and (on a GPU,
what keeps the CPU busy) the most CPU time.
An idle GPU points at the CPU side (kernel launches, Python, synchronizations); a busy one at the
kernels of the largest kind. `--trace FILE` also writes the Chrome trace (chrome://tracing, Perfetto).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

from ray_spider.config import load_run_config
from ray_spider.errors import UserError
from ray_spider.model import check_model_spec
from ray_spider.records import memory_line
from ray_spider.spider import Spider
from ray_spider.train import build_trainer, check_attention_trains, worker_setup

# (kind, substrings of a CUDA kernel's name, lower case): the first kind that matches takes the kernel
KERNEL_KINDS = (
    ("4-bit dequantize (bitsandbytes)", ("dequant", "4bit")),
    ("attention", ("flash", "fmha", "flex", "attention", "sdpa")),
    ("Liger (RMSNorm, SwiGLU, RoPE)", ("rms_norm", "swiglu", "rope")),
    ("matmul", ("gemm", "cutlass", "cublas", "nvjet", "xmma", "matmul")),
    ("copy, fill, cast", ("copy", "memcpy", "memset", "fill", "cast")),
    ("elementwise, reduce", ("elementwise", "vectorized", "reduce", "softmax")),
)
SYNCHRONIZE_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
# torch.compile's own timers (torch._dynamo.utils.compilation_time_metrics; seconds over every compiled frame),
# nested: the whole holds tracing and AOTAutograd, AOTAutograd holds inductor
COMPILE_PHASES = {"whole": "_compile.compile_inner", "tracing": "bytecode_tracing",
                  "aot": "create_aot_dispatcher_function", "inductor": "compile_fx_inner"}
AOT_CACHE_LOGGER = "torch._functorch._aot_autograd.autograd_cache"  # logs why it bypassed its cache, at INFO


class CacheBypasses(logging.Handler):
    """The reasons AOTAutograd gave for not caching a graph (so every process traces it again)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.reasons: set[str] = set()

    def emit(self, record):
        message = record.getMessage()
        if "Bypassing autograd cache due to:" in message:
            self.reasons.add(" ".join(message.split("due to:", 1)[1].split()))


@contextmanager
def caught_cache_bypasses():
    """AOTAutograd's INFO lines go to a CacheBypasses handler alone (not to torch's handlers on the
    terminal) inside the block; the logger is as it was after."""
    log, bypasses = logging.getLogger(AOT_CACHE_LOGGER), CacheBypasses()
    level, propagate = log.level, log.propagate
    log.addHandler(bypasses)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield bypasses
    finally:
        log.removeHandler(bypasses)
        log.setLevel(level)
        log.propagate = propagate


def compile_summary(bypasses: CacheBypasses) -> str:
    """One line: where torch.compile's time went (all steps, profiled ones too) and what its on-disk caches did:
    inductor's FX graph cache (hit: no code generated) and AOTAutograd's (hit: the joint graph not traced again)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = {phase: sum(compilation_time_metrics.get(key, ())) for phase, key in COMPILE_PHASES.items()}
    if not seconds["whole"]:
        return "torch.compile: nothing compiled"
    caches = {f"{kind} {event}": counters[group][key] for kind, group, prefix in (("FX graph", "inductor", "fxgraph_cache"),
              ("AOTAutograd", "aot_autograd", "autograd_cache")) for event in ("hit", "miss", "bypass")
              if (key := f"{prefix}_{event}") in counters[group]}
    return (f"torch.compile: {seconds['whole']:.1f} s in all, of which tracing Python {seconds['tracing']:.1f} s and "
            f"AOTAutograd {seconds['aot']:.1f} s (of which inductor {seconds['inductor']:.1f} s); "
            f"{counters['stats']['unique_graphs']} graphs, {sum(counters['graph_break'].values())} graph breaks; caches: "
            + (", ".join(f"{name} {count}" for name, count in caches.items()) or "not used")
            + "".join(f"; AOTAutograd bypass: {reason}" for reason in sorted(bypasses.reasons)))


class ProfileSteps(TrainerCallback):
    """torch.profiler over optimizer steps ``warmup + 1 .. warmup + steps``; ``seconds`` is their wall
    time, the device synchronized at both ends; ``step_seconds`` the wall time of each warm-up step."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.profiler: profile | None = None
        self.seconds: float | None = None

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_begin(self, args, state, control, **kwargs):
        self.step_seconds: list[float] = []
        self._synchronize()
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step <= self.warmup:  # warm-up steps one by one: compilation shows in the first ones
            self._synchronize()
            now = time.perf_counter()
            self.step_seconds.append(now - self._step_started)
            self._step_started = now
        if state.global_step == self.warmup:  # synchronized just above
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self._started = time.perf_counter()
        elif state.global_step == self.warmup + self.steps and self.profiler is not None:
            self._synchronize()
            self.seconds = time.perf_counter() - self._started
            self.profiler.__exit__(None, None, None)


def kernel_kind(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(key in lower for key in keys)), "other")


def busy_seconds(intervals: list[tuple[int, int]]) -> float:
    """Seconds covered by the union of (start_us, end_us) intervals (kernels of several streams overlap)."""
    covered, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            covered += end - start
            reach = end
        elif end > reach:
            covered += end - reach
            reach = end
    return covered / 1e6


def tokens_between(log_history: list[dict], first: int, last: int) -> float | None:
    """Non-pad tokens trained in optimizer steps first+1 .. last, from TRL's cumulative ``num_tokens``
    (logged every step: train.logging_steps=1); None where a step has no such log."""
    seen = {entry["step"]: entry["num_tokens"] for entry in log_history if "num_tokens" in entry}
    return seen[last] - seen[first] if first in seen and last in seen else None


def summary(prof: profile, seconds: float, steps: int, on_gpu: bool, tokens: float | None) -> str:
    """The profile of ``steps`` optimizer steps as text: time per step, GPU busy and idle, kernels by kind, top ops."""
    events = prof.events()
    syncs = [e for e in events if e.device_type == DeviceType.CPU and e.name in SYNCHRONIZE_CALLS]
    wait = sum(e.cpu_time_total for e in syncs) / 1e6
    speed = f", {tokens / steps:,.0f} non-pad tokens per step = {tokens / seconds:,.0f} tokens/s under the profiler" if tokens else ""
    lines = [f"profiled {steps} optimizer step(s): {seconds / steps:.3f} s wall per step{speed}"]
    if on_gpu:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy = busy_seconds([(e.time_range.start, e.time_range.end) for e in kernels])
        lines.append(
            f"GPU kernels busy {busy / steps:.3f} s per step ({busy / seconds:.0%} of wall), idle {(seconds - busy) / steps:.3f} s; "
            f"{len(kernels) / steps:,.0f} kernels per step; the CPU waited in {len(syncs) / steps:,.0f} synchronize calls "
            f"per step, {wait / steps:.3f} s"
        )
        by_kind: dict[str, float] = {}
        for event in kernels:
            by_kind[kernel_kind(event.name)] = by_kind.get(kernel_kind(event.name), 0.0) + event.time_range.elapsed_us() / 1e6
        total = sum(by_kind.values()) or 1.0
        lines += ["", "| kernel kind | s per step | share of kernel time |", "| --- | ---: | ---: |"]
        lines += [f"| {kind} | {s / steps:.3f} | {s / total:.0%} |" for kind, s in sorted(by_kind.items(), key=lambda item: -item[1])]
    else:
        lines.append("no GPU: CPU ops only")
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    lines += ["", prof.key_averages().table(sort_by=sort_by, row_limit=15)]
    if on_gpu:  # what keeps the CPU busy while the GPU waits
        lines += ["ops by CPU time:", prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)]
    return "\n".join(lines)


def memory_summary(setup, device: torch.device) -> str:
    """The worker's memory plan and this process's peak GPU memory, as a run's report.md words them."""
    if setup.plan is None:
        return f"no memory plan; Liger kernels {'on' if setup.liger else 'off'}"
    info = {"memory_plan": setup.plan.as_dict(), "gradient_accumulation_steps": setup.cfg.gradient_accumulation_steps,
            "liger_kernel": setup.liger, "compiled_layers": setup.compiled_layers}
    if device.type == "cuda":
        info["gpu_peak_gb_train"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return memory_line(info)


def profile_steps(cfg, device: torch.device, warmup: int, steps: int) -> tuple[profile, str]:
    """The worker's setup (train.worker_setup) and trainer, ``warmup`` steps, then ``steps`` profiled:
    (the profiler, the text to print)."""
    setup = worker_setup(cfg, Spider(cfg.data.spider_dir), device)
    callback = ProfileSteps(warmup, steps, device)
    with caught_cache_bypasses() as bypasses, tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(setup.cfg, setup.model, setup.tokenizer, setup.tokenized, output_dir, device, [callback])
        trainer.train()
    tokens = tokens_between(trainer.state.log_history, warmup, warmup + steps)
    warmup_steps = ", ".join(f"{seconds:.2f}" for seconds in callback.step_seconds)
    text = memory_summary(setup, device) + f"\nwarm-up steps, s each (not profiled): {warmup_steps}\n{compile_summary(bypasses)}\n" + summary(callback.profiler, callback.seconds, steps, device.type == "cuda", tokens)
    return callback.profiler, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a run config, as for `ray-spider train`")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for `ray-spider train`")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before profiling (compilation, allocator), at least 1")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps profiled, at least 1")
    parser.add_argument("--trace", help="also write the Chrome trace of the profiled steps to this file")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error(f"--warmup {args.warmup} and --steps {args.steps}: both must be at least 1")
    if args.trace and not Path(args.trace).resolve().parent.is_dir():
        parser.error(f"--trace {args.trace}: its folder {Path(args.trace).resolve().parent} does not exist")
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        # max_steps: the trainer goes round the data as often as these steps need
        cfg = load_run_config(args.config, [*args.overrides, f"train.max_steps={args.warmup + args.steps}", "train.logging_steps=1"])
        check_model_spec(cfg.model.name)  # the checks `ray-spider train` makes before its workers start
        check_attention_trains(cfg, on_gpu=device.type == "cuda")
        if device.type == "cpu":
            torch.set_num_threads(cfg.train.cpus_per_worker)  # as a Ray worker's OMP_NUM_THREADS
        profiler, text = profile_steps(cfg, device, args.warmup, args.steps)
    except UserError as error:  # a config mistake, a budget the model does not fit: one line and exit 2, as the commands
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        raise SystemExit(130) from None
    print(text)
    if args.trace:
        profiler.export_chrome_trace(args.trace)
        if not Path(args.trace).is_file():
            raise SystemExit(f"error: the profiler did not write {args.trace} (its message is above)")
        print(f"wrote {args.trace}")


if __name__ == "__main__":
    main()
