"""The one owner of the prompt: schema serialization, chat messages and the prompt version.

Training examples and inference prompts are built by the same function, ``conversation``: the
inference prompt is the training conversation minus the assistant turn, so the two cannot drift.

    prompter = Prompter(Spider(), PromptConfig())
    prompter.conversation("concert_singer", "How many singers?", sql="SELECT count(*) FROM singer")

``prompt_version(cfg)`` is a stable hash of the template and options, recorded with every dataset
and run; change any of them and the version changes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import sqlite3
from functools import lru_cache

from ray_spider.config import PromptConfig
from ray_spider.evaluation.inputs import read_only_connection
from ray_spider.spider import Spider, SpiderError

USER_TEMPLATE = "<SCHEMA>\n{schema}\n</SCHEMA>\n\nQuestion: {question}"
# Bump when the serializers below change their output for the same options.
SERIALIZER_REVISION = 1
SAMPLE_VALUE_CHARS = 30
_PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# SQLite keywords that Spider uses as column names ("From" in railway): quoted in the schema
_KEYWORDS = set(
    """ABORT ACTION ADD ALL ALTER AND AS ASC BETWEEN BY CASE CAST CHECK COLLATE COLUMN CONSTRAINT CREATE CROSS
    DEFAULT DELETE DESC DISTINCT DROP ELSE END ESCAPE EXCEPT EXISTS FOREIGN FROM FULL GLOB GROUP HAVING IN INDEX
    INNER INSERT INTERSECT INTO IS ISNULL JOIN KEY LEFT LIKE LIMIT MATCH NATURAL NOT NOTNULL NULL OF OFFSET ON OR
    ORDER OUTER PRIMARY REFERENCES REGEXP REPLACE RIGHT SELECT SET TABLE THEN TO TRANSACTION UNION UNIQUE UPDATE
    USING VALUES WHEN WHERE WITH""".split()
)


def prompt_version(cfg: PromptConfig) -> str:
    payload = json.dumps(
        {"user_template": USER_TEMPLATE, "serializer": SERIALIZER_REVISION, **cfg.model_dump()}, sort_keys=True
    )
    return "p" + hashlib.sha256(payload.encode()).hexdigest()[:10]


def quote_identifier(name: str) -> str:
    plain = _PLAIN_IDENTIFIER.match(name) and name.upper() not in _KEYWORDS
    return name if plain else '"' + name.replace('"', '""') + '"'


def build_messages(system_prompt: str, schema: str, question: str, sql: str | None = None) -> list[dict]:
    """System + user turns; with ``sql`` also the assistant turn (the gold SQL and nothing else)."""
    messages = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": USER_TEMPLATE.format(schema=schema, question=question.strip())},
    ]
    if sql is not None:
        messages.append({"role": "assistant", "content": sql.strip()})
    return messages


def _columns_by_table(table: dict) -> list[list[tuple[int, str, str]]]:
    """For each table: (column index, original name, type), in tables.json order."""
    columns = [[] for _ in table["table_names_original"]]
    for index, ((table_index, name), col_type) in enumerate(zip(table["column_names_original"], table["column_types"])):
        if table_index >= 0:
            columns[table_index].append((index, name, col_type))
    return columns


def _flat_primary_keys(table: dict) -> set[int]:
    keys = set()
    for key in table["primary_keys"]:
        keys.update(key if isinstance(key, list) else [key])
    return keys


def _column_ref(table: dict, column_index: int) -> tuple[str, str]:
    table_index, column = table["column_names_original"][column_index]
    return table["table_names_original"][table_index], column


def read_sample_values(db_path, table_name: str, column: str, limit: int) -> list[str]:
    """Up to ``limit`` distinct non-null values of a column, read-only; [] when unreadable."""
    try:
        with read_only_connection(db_path) as conn:
            rows = conn.execute(
                f"SELECT DISTINCT {quote_identifier(column)} FROM {quote_identifier(table_name)} "
                f"WHERE {quote_identifier(column)} IS NOT NULL LIMIT {int(limit)}"
            ).fetchall()
    except (sqlite3.Error, FileNotFoundError):
        return []
    return [str(value)[:SAMPLE_VALUE_CHARS] for (value,) in rows]


def serialize_schema(table: dict, cfg: PromptConfig, db_path=None) -> str:
    """Deterministic text of one database schema: tables, typed columns, primary and foreign keys."""
    serializer = _create_table_schema if cfg.schema_format == "create_table" else _compact_schema
    return serializer(table, cfg.sample_values if db_path else 0, db_path)


def _samples_suffix(db_path, table_name: str, column: str, limit: int, template: str) -> str:
    if not limit:
        return ""
    values = read_sample_values(db_path, table_name, column, limit)
    return template.format(", ".join(values)) if values else ""


def _create_table_schema(table: dict, samples: int, db_path) -> str:
    primary = _flat_primary_keys(table)
    blocks = []
    for table_index, columns in enumerate(_columns_by_table(table)):
        table_name = table["table_names_original"][table_index]
        # (definition, trailing comment): the comma must precede the comment
        lines = [
            (f"{quote_identifier(name)} {col_type}", _samples_suffix(db_path, table_name, name, samples, " -- e.g. {}"))
            for _, name, col_type in columns
        ]
        keys = [quote_identifier(name) for index, name, _ in columns if index in primary]
        if keys:
            lines.append((f"PRIMARY KEY ({', '.join(keys)})", ""))
        for source, target in table["foreign_keys"]:
            source_table, source_column = _column_ref(table, source)
            if source_table == table_name:
                target_table, target_column = _column_ref(table, target)
                reference = f"{quote_identifier(target_table)}({quote_identifier(target_column)})"
                lines.append((f"FOREIGN KEY ({quote_identifier(source_column)}) REFERENCES {reference}", ""))
        body = "\n".join(
            f"  {text}{',' if position < len(lines) - 1 else ''}{comment}" for position, (text, comment) in enumerate(lines)
        )
        blocks.append(f"CREATE TABLE {quote_identifier(table_name)} (\n{body}\n);")
    return "\n".join(blocks)


def _compact_schema(table: dict, samples: int, db_path) -> str:
    primary = _flat_primary_keys(table)
    lines = []
    for table_index, columns in enumerate(_columns_by_table(table)):
        table_name = table["table_names_original"][table_index]
        parts = [
            f"{name} {col_type}{' PK' if index in primary else ''}"
            + _samples_suffix(db_path, table_name, name, samples, " [{}]")
            for index, name, col_type in columns
        ]
        lines.append(f"{table_name}({', '.join(parts)})")
    for source, target in table["foreign_keys"]:
        (source_table, source_column), (target_table, target_column) = _column_ref(table, source), _column_ref(table, target)
        lines.append(f"{source_table}.{source_column} = {target_table}.{target_column}")
    return "\n".join(lines)


class Prompter:
    """Builds conversations for one Spider folder and one PromptConfig; caches schema text per db."""

    def __init__(self, spider: Spider, cfg: PromptConfig):
        self.spider = spider
        self.cfg = cfg
        self.version = prompt_version(cfg)
        self.schema = lru_cache(maxsize=None)(self._schema)

    def _schema(self, db_id: str) -> str:
        if db_id not in self.spider.tables:
            close = difflib.get_close_matches(db_id, self.spider.tables, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(self.spider.tables)} databases there)"
            raise SpiderError(f"db_id {db_id!r} is not in {self.spider.root / 'tables.json'}{hint}")
        db_path = self.spider.db_path(db_id)
        return serialize_schema(self.spider.tables[db_id], self.cfg, db_path if db_path.is_file() else None)

    def conversation(self, db_id: str, question: str, sql: str | None = None) -> list[dict]:
        """The training conversation when ``sql`` is given; the inference prompt when it is not."""
        return build_messages(self.cfg.system_prompt, self.schema(db_id), question, sql)


def render_generation_prompt(tokenizer, prompt_messages: list[dict]) -> str:
    """Prompt text fed to the model at inference: the chat template with the assistant header opened."""
    return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)


def render_training_texts(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(prompt, completion) texts of a training conversation. The prompt is exactly what inference
    renders (``render_generation_prompt``); the completion is the rest: the SQL and end of turn."""
    prompt = render_generation_prompt(tokenizer, messages[:-1])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            f"the chat template of {tokenizer.name_or_path!r} renders the conversation without the answer differently "
            "from its start with the answer, so training and inference prompts would differ; use another template"
        )
    return prompt, full[len(prompt):]


def tokenize_example(row: dict, tokenizer) -> dict:
    """The tokens the model trains on for one SFT row (``data.sft_row``): ``input_ids`` and a
    ``completion_mask`` (1 on the SQL and its end of turn, where the loss is taken).

    Prompt and completion are tokenized apart, so the model trains on exactly the tokens inference
    sends (tokenizing the joined text can merge tokens across the boundary, e.g. '\n\n' + 'SELECT').
    Training and `data build`'s token statistics both count tokens with this function.
    """
    prompt, completion = render_training_texts(tokenizer, row["messages"])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + completion_ids, "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}
