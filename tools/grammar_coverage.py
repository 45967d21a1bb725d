"""How many gold queries the schema-constrained grammar accepts, tokenized as a model would write them.

A grammar that rejects a gold query can only hurt: constrained decoding could not write it. Each
gold query (its text as in the gold file, whitespace and all) is tokenized by the model's
tokenizer and fed to its database's matcher, then the end-of-turn token. Not run in CI.

    python tools/grammar_coverage.py --spider $SPIDER_DIR [--gold dev_gold.sql] [--model smollm2-135m-instruct] [--show 20]

Prints the acceptance rate and the rejected queries with llguidance's reason.
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spider", default=None, help="Spider folder (default: $SPIDER_DIR)")
    parser.add_argument("--gold", default=None, help="'SQL<TAB>db_id' file (default: <spider>/dev_gold.sql)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer")
    parser.add_argument("--show", type=int, default=20, help="rejected queries to print")
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
    for query in rejected[: args.show]:
        matcher = grammars.matcher(spider.tables[query.db_id])
        matcher.consume_tokens(tokenizer(query.sql.strip(), add_special_tokens=False)["input_ids"] + [stop_id])
        reason = matcher.get_error().splitlines()[0] if matcher.get_error() else "not complete"
        print(f"  [{query.db_id}] {query.sql}\n      {reason}")


if __name__ == "__main__":
    main()
