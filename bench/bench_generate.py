"""Benchmark: questions/s of `inference.generate` beside plainer ways to answer the same questions,
in one run, on the same seeded sample of dev questions, same greedy settings and max_new_tokens;
and how many answers differ from the first side.

    SPIDER_DIR=../shared/spider python bench/bench_generate.py                   # CPU default, a few minutes
    SPIDER_DIR=../shared/spider python bench/bench_generate.py --device cuda --questions 972 \
        --adapter ADAPTER --merge --max-new-tokens 256 --sides hf:512,pruned:512,pruned:1024   # H200: all of dev-972
    SPIDER_DIR=../shared/spider python bench/bench_generate.py --device cuda --questions 972 \
        --max-new-tokens 48 --repeats 2 --sides pruned:1024+noprefix,pruned:1024+prefix,pruned:256+noprefix,pruned:256+prefix
    SPIDER_DIR=../shared/spider python bench/bench_generate.py --device cuda --questions 972 \
        --model models/llama31-8b-shape --quantization none --max-new-tokens 48 \
        --sides pruned:256+noprefix,pruned:256+prefix,pruned:512+prefix   # an 8B shape (make_shape_model.py)

The 8B shape model's weights are random: its answers are noise (ids past the tokenizer's
vocabulary decode to nothing), so only its seconds count there, not the answers compared.

Sides (``--sides``, comma-separated, timed in this order, then in reverse for --repeats 2):
  unbatched      one ``model.generate`` call per question, no padding (the obvious loop)
  hf:N           ``inference.generate`` with engine hf (transformers' generate) at batch N
  pruned:N       ``inference.generate`` with engine pruned (finished answers leave the batch) at batch N
  ...+cudnn      hf:N or pruned:N with cuDNN attention allowed too (torch's default set of SDPA kernels,
                 which ``inference.DECODING_ATTENTION`` leaves out)
  ...+graphR     pruned:N with generation.cuda_graph_rows R (0: never leave the eager loop; without
                 the suffix, the default)
  ...+prefix     pruned:N with generation.prefix_cache on (the prompt tokens a batch's questions of one
  ...+noprefix   database share are read once per batch, ``prefix_cache.py``) or off (every row reads
                 its whole prompt); without the suffix, the default (on)
  ...+shared     pruned:N with prefix caching and generation.share_prefix_kv on (one KV copy of each
                 shared prefix, cascade attention, ``shared_prefix_kv.py``)
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
from ray_spider.model import load_for_inference, load_tokenizer, resolve_model
from ray_spider.prefix_cache import SharedPrefixBatch, batch_order, prefix_groups
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
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model spec, as model.name")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (default: the base model)")
    parser.add_argument("--quantization", choices=["nf4", "none"], default="none", help="none = bf16 on GPU, float32 on CPU")
    parser.add_argument("--questions", type=int, default=16, help="seeded sample of dev-972 (the one training evaluates)")
    parser.add_argument("--sides", default="unbatched,hf:8,pruned:8", help="comma-separated: unbatched, hf:N, pruned:N[+cudnn][+graphR][+prefix|+noprefix|+shared]")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base (generation.merge_adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating unbatched/batched pairs; medians are reported")
    parser.add_argument("--seed", type=int, default=42, help="dev sample seed (train.seed picks the same sample)")
    parser.add_argument("--prompt-work", action="store_true", help="only print what prefix caching saves on the prompts at each side's batch size (tokenizer only, no model)")
    parser.add_argument("--profile", action="store_true", help="then run the last side once more under torch.profiler: where its time goes")
    args = parser.parse_args()
    print("python " + shlex.join(sys.argv), flush=True)

    torch.set_num_threads(args.threads)
    spider = Spider()
    prompter = Prompter(spider, PromptConfig())
    examples, _ = dev_examples(spider, args.questions, seed=args.seed)
    prompts = [prompter.conversation(e.db_id, e.question) for e in examples]
    batch_sizes = sorted({int(spec.split(":")[1].split("+")[0]) for spec in args.sides.split(",") if ":" in spec})
    if args.prompt_work:
        print_prompt_work(load_tokenizer(resolve_model(args.model)), prompts, examples, batch_sizes)
        return
    device = "cuda:0" if args.device == "cuda" else "cpu"
    model, tokenizer = load_for_inference(ModelConfig(name=args.model, quantization=args.quantization), args.adapter, merge=args.merge, device=device)
    gen_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
    for engine, prefix_cache, shared in (("hf", False, False), ("pruned", False, False), ("pruned", True, False), ("pruned", True, True)):  # warm-up
        warm_up = {"max_new_tokens": 4, "engine": engine, "prefix_cache": prefix_cache, "share_prefix_kv": shared}
        generate(model, tokenizer, prompts[:2], gen_cfg.model_copy(update=warm_up), progress=False)

    sides = {}
    for spec in args.sides.split(","):
        if spec == "unbatched":
            sides[spec] = lambda: unbatched(model, tokenizer, prompts, args.max_new_tokens)
            continue
        side = re.fullmatch(r"(hf|pruned):(\d+)(\+cudnn)?(?:\+graph(\d+))?(?:\+(prefix|noprefix|shared))?", spec)
        if side is None:
            parser.error(
                f"--sides: {spec!r} is not unbatched, hf:N or pruned:N (each may end in +cudnn, then +graphR, then +prefix, +noprefix or +shared)"
            )
        engine, batch, plus_cudnn, graph_rows, prefix = side.groups()
        attention = (SDPBackend.CUDNN_ATTENTION, *DECODING_ATTENTION) if plus_cudnn else DECODING_ATTENTION
        update = {"engine": engine, "batch_size": int(batch)} | ({"cuda_graph_rows": int(graph_rows)} if graph_rows else {})
        update |= {"prefix_cache": prefix != "noprefix", "share_prefix_kv": prefix == "shared"} if prefix else {}
        sides[spec] = lambda side_cfg=gen_cfg.model_copy(update=update), attention=attention: generate(
            model, tokenizer, prompts, side_cfg, progress=False, attention=attention
        )
    runs, answers = {name: [] for name in sides}, {}
    for repeat in range(args.repeats):
        for name in list(sides) if repeat % 2 == 0 else list(sides)[::-1]:  # alternate the order against drift
            seconds, answers[name] = timed(sides[name])
            runs[name].append(seconds)
            peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB" if torch.cuda.is_available() else ""
            print(f"  [{repeat + 1}/{args.repeats}] {name:24s} {seconds:7.2f} s{peak}", flush=True)

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
    print_prompt_work(tokenizer, prompts, examples, batch_sizes)
    print(
        f"  answers ({first}): mean {statistics.fmean(new_tokens):.1f} tokens, "
        f"{sum(length >= args.max_new_tokens for length in new_tokens)} of {n} at max_new_tokens"
    )
    print(f"  {'side':24s} {'seconds':>8s} {'q/s':>8s} {'vs ' + first:>14s} {'answers differing from ' + first}")
    base_s = statistics.median(runs[first])
    for name in sides:
        seconds = statistics.median(runs[name])
        differ = [i for i, (a, b) in enumerate(zip(answers[first], answers[name])) if a != b]
        print(f"  {name:24s} {seconds:8.2f} {n / seconds:8.2f} {base_s / seconds:13.2f}x {len(differ)} of {n}")
        for index in differ[:2]:
            print(f"    [{index}] {first}: {answers[first][index]!r}\n    [{index}] {name}: {answers[name][index]!r}")
    if args.profile:
        last = list(sides)[-1]
        profile(last, sides[last], args.device)


def batched(order: list[int], size: int) -> list[list[int]]:
    return [order[start : start + size] for start in range(0, len(order), size)]


def print_prompt_work(tokenizer, prompts: list[list[dict]], examples, batch_sizes: list[int]) -> None:
    """What prefix caching saves on these prompts: the share of prompt tokens in shared prefixes, and
    per batch size the tokens the prompts' forward passes read and how full the KV cache is."""
    encoded = [tokenizer(render_generation_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    groups, total = prefix_groups(encoded), sum(map(len, encoded))
    shared = sum(group.prefix_length * len(group.members) for group in groups)
    print(
        f"  prefix caching: {len(groups)} groups of prompts sharing a prefix ({len({e.db_id for e in examples})} databases), "
        f"the shared prefixes {shared / total:.1%} of the {total} prompt tokens"
    )
    for batch_size in batch_sizes:
        (whole, whole_columns), (cached, cached_columns) = (prompt_work(encoded, batch_size, on) for on in (False, True))
        print(
            f"    batch {batch_size}: the prompts' forwards read {whole} tokens with pads (whole prompts), {cached} "
            f"({cached / whole:.3f}x) with prefix caching; real tokens in the KV cache after them {total / whole_columns:.1%} "
            f"/ {total / cached_columns:.1%}"
        )


def prompt_work(encoded: list[list[int]], batch_size: int, prefix_cache: bool) -> tuple[int, int]:
    """(tokens the forward passes over the prompts read, pads included; columns of the KV cache after
    them, rows x width summed over batches), batched as ``inference.generate`` batches them."""
    if not prefix_cache:
        order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
        widths = [(len(batch), max(len(encoded[index]) for index in batch)) for batch in batched(order, batch_size)]
        return sum(rows * width for rows, width in widths), sum(rows * width for rows, width in widths)
    read = columns = 0
    for batch in batched(batch_order(encoded), batch_size):
        layout = SharedPrefixBatch.of([encoded[index] for index in batch], pad_id=0)
        read += layout.prefix_ids.numel() + layout.rest_ids.numel()
        columns += layout.attention_mask.numel()
    return read, columns


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
