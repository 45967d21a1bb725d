"""How many gold queries the schema-constrained grammar accepts, tokenized as a model would write them.

A grammar that rejects a gold query can only hurt: constrained decoding could not write it. Each
gold query (its text as in the gold file, whitespace and all) is tokenized by the model's
tokenizer and fed to its database's matcher, then the end-of-turn token. Not run in CI.

    python tools/grammar_coverage.py --spider $SPIDER_DIR [--gold dev_gold.sql] [--model smollm2-135m-instruct] [--show 20] [--time-masks 200]

Prints the acceptance rate and the rejected queries with llguidance's reason; with --time-masks,
the CPU time of one row's mask per decoding step along the first N gold queries.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ray_spider.constrained import grammars_for
from ray_spider.evaluation.inputs import read_gold_file
from ray_spider.model import load_tokenizer, resolve_model
from ray_spider.spider import Spider


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--spider", default=None, help="Spider folder (default: $SPIDER_DIR)")
    parser.add_argument("--gold", default=None, help="'SQL<TAB>db_id' file (default: <spider>/dev_gold.sql)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer")
    parser.add_argument("--show", type=int, default=20, help="rejected queries to print")
    parser.add_argument("--time-masks", type=int, default=0, metavar="N", help="also time the token masks along the first N gold queries")
    args = parser.parse_args()

    spider = Spider(args.spider)
    gold = read_gold_file(args.gold or spider.root / "dev_gold.sql")
    tokenizer = load_tokenizer(resolve_model(args.model))
    grammars = grammars_for(tokenizer)
    stop_id = grammars.stop_id
    started = time.perf_counter()
    rejected = []
    for query in gold:
        tokens = tokenizer(query.sql.strip(), add_special_tokens=False)["input_ids"]
        if not grammars.accepts(spider.tables[query.db_id], tokens):
            rejected.append(query)
    elapsed = time.perf_counter() - started
    accepted = len(gold) - len(rejected)
    print(f"accepted {accepted}/{len(gold)} = {accepted / len(gold):.2%} gold queries of {Path(args.gold or 'dev_gold.sql').name} "
          f"({len(grammars._compiled)} databases, {elapsed:.1f} s)")
    if args.time_masks:
        time_masks(grammars, tokenizer, spider, gold[: args.time_masks])
    for query in rejected[: args.show]:
        matcher = grammars.matcher(spider.tables[query.db_id])
        matcher.consume_tokens(tokenizer(query.sql.strip(), add_special_tokens=False)["input_ids"] + [stop_id])
        reason = matcher.get_error().splitlines()[0] if matcher.get_error() else "not complete"
        print(f"  [{query.db_id}] {query.sql}\n      {reason}")


def time_masks(grammars, tokenizer, spider: Spider, queries) -> None:
    """The CPU time of one row's next-token mask, decoding each gold query token by token (one thread)."""
    seconds = []
    for query in queries:
        constraint = grammars.constraint([spider.tables[query.db_id]])
        for token in tokenizer(query.sql.strip(), add_special_tokens=False)["input_ids"]:
            started = time.perf_counter()
            constraint.bitmask([0])
            seconds.append(time.perf_counter() - started)
            constraint.advance([0], [token])
    seconds.sort()
    print(f"mask per row and step over {len(seconds)} steps: mean {1e3 * sum(seconds) / len(seconds):.2f} ms, "
          f"median {1e3 * seconds[len(seconds) // 2]:.2f} ms, p99 {1e3 * seconds[int(0.99 * len(seconds))]:.2f} ms")


if __name__ == "__main__":
    main()
