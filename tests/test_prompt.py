import sqlite3

import pytest

from ray_spider.config import DEFAULT_SYSTEM_PROMPT, ConfigError, DataConfig, PromptConfig, load_run_config
from ray_spider.data import build_sft_dataset, dev_examples, scored_dev_examples, train_examples
from ray_spider.prompt import Prompter, prompt_version, quote_identifier
from ray_spider.spider import Spider, SpiderError

PERPETRATOR_SCHEMA = """CREATE TABLE perpetrator (
  Perpetrator_ID number,
  People_ID number,
  Date text,
  Year number,
  Location text,
  Country text,
  Killed number,
  Injured number,
  PRIMARY KEY (Perpetrator_ID),
  FOREIGN KEY (People_ID) REFERENCES people(People_ID)
);
CREATE TABLE people (
  People_ID number,
  Name text,
  Height number,
  Weight number,
  "Home Town" text,
  PRIMARY KEY (People_ID)
);"""


def test_golden_conversation(spider):
    messages = Prompter(spider, PromptConfig()).conversation("perpetrator", " How many? ", "SELECT count(*) FROM people ")
    assert messages == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": f"<SCHEMA>\n{PERPETRATOR_SCHEMA}\n</SCHEMA>\n\nQuestion: How many?"},
        {"role": "assistant", "content": "SELECT count(*) FROM people"},
    ]


def test_inference_prompt_is_training_prefix(spider):
    prompter = Prompter(spider, PromptConfig(sample_values=2))
    for example in spider.examples("dev")[:50]:
        training = prompter.conversation(example.db_id, example.question, example.query)
        assert prompter.conversation(example.db_id, example.question) == training[:-1]
        assert training[-1] == {"role": "assistant", "content": example.query.strip()}


def test_every_schema_is_valid_sqlite_ddl(spider):
    prompter = Prompter(spider, PromptConfig())
    for db_id in spider.tables:
        if db_id in ("world_1", "soccer_1", "store_1"):  # they list sqlite_sequence, a reserved name
            continue
        sqlite3.connect(":memory:").executescript(prompter.schema(db_id))


def test_compact_schema_and_samples(spider):
    text = Prompter(spider, PromptConfig(schema_format="compact", sample_values=1)).schema("perpetrator")
    assert text.splitlines()[-1] == "perpetrator.People_ID = people.People_ID"
    assert text.startswith("perpetrator(Perpetrator_ID number PK [1], People_ID number [1]")


@pytest.mark.parametrize("folder", ["a#b", "a?b", "100%"])
def test_sample_values_read_databases_under_any_folder_name(spider, tmp_path, folder):
    """The database URI is escaped: '#', '?' or '%' in a folder name used to lose the sample values."""
    import shutil

    from ray_spider.prompt import read_sample_values

    copy = tmp_path / folder / "singer.sqlite"
    copy.parent.mkdir()
    shutil.copy(spider.db_path("concert_singer"), copy)
    assert read_sample_values(copy, "singer", "Name", 2) == ["Joe Sharp", "Timbaland"]


def test_version_tracks_template_and_options():
    base = prompt_version(PromptConfig())
    assert base == prompt_version(PromptConfig())
    assert base != prompt_version(PromptConfig(schema_format="compact"))
    assert base != prompt_version(PromptConfig(sample_values=3))
    assert base != prompt_version(PromptConfig(system_prompt="Answer in SQL."))


def test_quote_identifier():
    assert quote_identifier("Name") == "Name"
    assert quote_identifier("Home Town") == '"Home Town"'
    assert quote_identifier("From") == '"From"'


def test_sft_build_covers_all_train_examples(spider):
    prompter = Prompter(spider, PromptConfig())
    examples = train_examples(spider, DataConfig())
    dataset = build_sft_dataset(prompter, examples)
    assert len(dataset) == 7000
    assert all(row["completion"][0]["content"] == row["query"].strip() for row in dataset)
    assert all(row["messages"][:-1] == row["prompt"] for row in dataset.select(range(200)))
    assert set(dataset["prompt_version"]) == {prompter.version}


def test_dev_972(spider):
    dev, skipped = dev_examples(spider)
    assert (len(dev), len(skipped)) == (972, 62)
    assert {e.db_id for e in skipped} == {"wta_1"}
    subset, _ = dev_examples(spider, subset=40, seed=3)
    assert len(subset) == 40 and subset == dev_examples(spider, subset=40, seed=3)[0]


def test_dev_subset_does_not_follow_the_training_seed(spider):
    scored = {overrides: scored_dev_examples(spider, load_run_config(None, ["data.dev_subset=40", *overrides]).data)
              for overrides in [(), ("train.seed=7",), ("data.dev_subset_seed=1",)]}
    assert scored[()] == scored[("train.seed=7",)]  # re-runs with another seed answer the same questions
    assert scored[()] != scored[("data.dev_subset_seed=1",)]


def test_bad_spider_folder_is_named(tmp_path):
    with pytest.raises(SpiderError, match=str(tmp_path)):
        Spider(tmp_path)
    (tmp_path / "tables.json").write_text("{not json")
    with pytest.raises(SpiderError, match="tables.json: not valid JSON"):
        Spider(tmp_path).tables
    (tmp_path / "tables.json").write_text("[]")
    with pytest.raises(SpiderError, match="dev.json"):
        Spider(tmp_path).examples("dev")
    with pytest.raises(SpiderError, match="valid: train, train_others, dev"):
        Spider(tmp_path).examples("test")


def test_hardness_filters_and_the_training_sample(spider):
    from ray_spider.evaluation.exact_match import ExactMatcher

    matcher = ExactMatcher(spider.root / "database", spider.root / "tables.json")
    first = train_examples(spider, DataConfig(max_train_examples=20, train_hardness=["easy"]))
    sampled = train_examples(spider, DataConfig(max_train_examples=20, train_hardness=["easy"], train_sample_seed=0))
    for rows in (first, sampled):
        assert len(rows) == 20 and all(matcher.hardness(e.query, e.db_id) == "easy" for e in rows)
    assert [e.index for e in first] == sorted(e.index for e in first)  # file order: a few databases only
    assert len({e.db_id for e in sampled}) > 2 * len({e.db_id for e in first})  # a sample spans many
    assert sampled == train_examples(spider, DataConfig(max_train_examples=20, train_hardness=["easy"], train_sample_seed=0))

    easy, skipped = dev_examples(spider, hardness=["easy"])
    assert 0 < len(easy) < 972 and len(skipped) == 62
    assert all(matcher.hardness(e.query, e.db_id) == "easy" for e in easy)
    subset = scored_dev_examples(spider, DataConfig(dev_hardness=["easy"], dev_subset=20))
    assert len(subset) == 20 and set(subset) <= set(easy)


def test_hardness_levels_are_validated():
    with pytest.raises(ConfigError, match="data.dev_hardness"):
        load_run_config(None, ["data.dev_hardness=[simple]"])
