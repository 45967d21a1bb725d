"""Benchmark: questions/s of `inference.generate` beside plainer ways to answer the same questions,
in one run, on the same seeded sample of dev questions, same greedy settings and max_new_tokens;
and how many answers differ from the first side.

    SPIDER_DIR=../shared/spider python bench/bench_generate.py                   # CPU default, a few minutes
    SPIDER_DIR=../shared/spider python bench/bench_generate.py --device cuda --questions 972 \
        --adapter ADAPTER --merge --max-new-tokens 256 --sides hf:512,pruned:512,pruned:1024   # H200: all of dev-972

Sides (``--sides``, comma-separated, timed in this order, then in reverse for --repeats 2):
  unbatched      one ``model.generate`` call per question, no padding (the obvious loop)
  hf:N           ``inference.generate`` with engine hf (transformers' generate) at batch N
  pruned:N       ``inference.generate`` with engine pruned (finished answers leave the batch) at batch N
  ...+cudnn      hf:N or pruned:N with cuDNN attention allowed too (torch's default set of SDPA kernels,
                 which ``inference.DECODING_ATTENTION`` leaves out)
  ...+graphR     pruned:N with generation.cuda_graph_rows R (0: never leave the eager loop; without
                 the suffix, the default)
Every side gets the same model object, the same rendered prompts (``prompt.render_generation_prompt``)
and the same stop tokens (``inference.greedy_config``). One short warm-up call per side runs first,
untimed. Greedy decoding is not bit-identical across batch shapes (padding and matmul shapes change
the float rounding), so a few answers can differ where two tokens are near-tied; the count is printed.
Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import sys
import time

import torch
from torch.nn.attention import SDPBackend

from ray_spider.config import GenerationConfig, ModelConfig, PromptConfig
from ray_spider.data import dev_examples
from ray_spider.inference import DECODING_ATTENTION, generate, greedy_config
from ray_spider.model import load_for_inference
from ray_spider.prompt import Prompter, render_generation_prompt
from ray_spider.spider import Spider


@torch.no_grad()
def unbatched(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    """The obvious way: one question at a time, no padding."""
    generation_config = greedy_config(tokenizer, model, GenerationConfig(max_new_tokens=max_new_tokens))
    device = next(model.parameters()).device
    answers = []
    for messages in prompts:
        text = render_generation_prompt(tokenizer, messages)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
        output = model.generate(**inputs, generation_config=generation_config)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip())
    return answers


def timed(function) -> tuple[float, list[str]]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model spec, as model.name")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (default: the base model)")
    parser.add_argument("--quantization", choices=["nf4", "none"], default="none", help="none = bf16 on GPU, float32 on CPU")
    parser.add_argument("--questions", type=int, default=16, help="seeded sample of dev-972 (the one training evaluates)")
    parser.add_argument("--sides", default="unbatched,hf:8,pruned:8", help="comma-separated: unbatched, hf:N, pruned:N")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base (generation.merge_adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating unbatched/batched pairs; medians are reported")
    parser.add_argument("--seed", type=int, default=42, help="dev sample seed (train.seed picks the same sample)")
    parser.add_argument("--profile", action="store_true", help="then run the last side once more under torch.profiler: where its time goes")
    args = parser.parse_args()
    print("python " + shlex.join(sys.argv), flush=True)

    torch.set_num_threads(args.threads)
    spider = Spider()
    prompter = Prompter(spider, PromptConfig())
    examples, _ = dev_examples(spider, args.questions, seed=args.seed)
    prompts = [prompter.conversation(e.db_id, e.question) for e in examples]
    device = "cuda:0" if args.device == "cuda" else "cpu"
    model, tokenizer = load_for_inference(ModelConfig(name=args.model, quantization=args.quantization), args.adapter, merge=args.merge, device=device)
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
    for engine in ("hf", "pruned"):  # warm-up
        generate(model, tokenizer, prompts[:2], gen_cfg.model_copy(update={"max_new_tokens": 4, "engine": engine}), progress=False)

    sides = {}
    for spec in args.sides.split(","):
        if spec == "unbatched":
            sides[spec] = lambda: unbatched(model, tokenizer, prompts, args.max_new_tokens)
            continue
        side = re.fullmatch(r"(hf|pruned):(\d+)(\+cudnn)?(?:\+graph(\d+))?", spec)
        if side is None:
            parser.error(f"--sides: {spec!r} is not unbatched, hf:N or pruned:N (each may end in +cudnn, then +graphR)")
        engine, batch, plus_cudnn, graph_rows = side.groups()
        attention = (SDPBackend.CUDNN_ATTENTION, *DECODING_ATTENTION) if plus_cudnn else DECODING_ATTENTION
        update = {"engine": engine, "batch_size": int(batch)} | ({"cuda_graph_rows": int(graph_rows)} if graph_rows else {})
        sides[spec] = lambda side_cfg=gen_cfg.model_copy(update=update), attention=attention: generate(
            model, tokenizer, prompts, side_cfg, progress=False, attention=attention
        )
    runs, answers = {name: [] for name in sides}, {}
    for repeat in range(args.repeats):
        for name in list(sides) if repeat % 2 == 0 else list(sides)[::-1]:  # alternate the order against drift
            seconds, answers[name] = timed(sides[name])
            runs[name].append(seconds)
            print(f"  [{repeat + 1}/{args.repeats}] {name:18s} {seconds:7.2f} s", flush=True)

    prompt_tokens = [len(tokenizer(render_generation_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
    new_tokens = [len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers[next(iter(sides))]]
    n, first = len(prompts), next(iter(sides))
    print(
        f"\n{n} dev questions (seed {args.seed}; prompts {min(prompt_tokens)}-{max(prompt_tokens)} tokens, mean "
        f"{statistics.fmean(prompt_tokens):.0f}), {args.model} {args.quantization}"
        f"{' + ' + args.adapter + (' merged' if args.merge else '') if args.adapter else ''}, greedy, "
        f"max_new_tokens {args.max_new_tokens}, {args.device}, {args.threads} threads, torch {torch.__version__}, "
        f"median of {args.repeats}"
    )
    print(
        f"  answers ({first}): mean {statistics.fmean(new_tokens):.1f} tokens, "
        f"{sum(length >= args.max_new_tokens for length in new_tokens)} of {n} at max_new_tokens"
    )
    print(f"  {'side':18s} {'seconds':>8s} {'q/s':>8s} {'vs ' + first:>14s} {'answers differing from ' + first}")
    base_s = statistics.median(runs[first])
    for name in sides:
        seconds = statistics.median(runs[name])
        differ = [i for i, (a, b) in enumerate(zip(answers[first], answers[name])) if a != b]
        print(f"  {name:18s} {seconds:8.2f} {n / seconds:8.2f} {base_s / seconds:13.2f}x {len(differ)} of {n}")
        for index in differ[:2]:
            print(f"    [{index}] {first}: {answers[first][index]!r}\n    [{index}] {name}: {answers[name][index]!r}")
    if args.profile:
        last = list(sides)[-1]
        profile(last, sides[last], args.device)


def profile(name: str, side, device: str) -> None:
    """The ops that take the time of one more run of a side, and how busy the GPU was meanwhile."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        seconds, _ = timed(side)
    ops = prof.key_averages()
    # kernels only: an op's self device time is its kernels' time again, so summing ops counts it twice
    busy = sum(event.time_range.elapsed_us() for event in prof.events() if event.device_type == DeviceType.CUDA) / 1e6
    print(f"\nprofile of {name}: {seconds:.2f} s wall (profiled), GPU kernels {busy:.2f} s")
    print(ops.table(sort_by="self_device_time_total" if device == "cuda" else "self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
