"""Schema-constrained decoding: at each step only tokens that keep the answer a valid prefix of a
SQLite SELECT over the question's database are allowed, then the end-of-turn token.

    grammars = SchemaGrammars(tokenizer, stop_id)          # once per tokenizer (~1 s: the token trie)
    constraint = grammars.constraint([tables["concert_singer"], ...])  # one matcher per batch row
    bitmask = constraint.bitmask([0, 1, 2])                # (3, words) int32, bit t of row r: token t allowed
    logits = mask_logits(logits, bitmask.to(logits.device))
    constraint.advance([0, 1, 2], next_tokens.tolist())

The grammar (``sql_grammar``) is a Lark grammar of Spider's SQL subset: SELECT [DISTINCT], the
aggregates, FROM with JOIN ... ON, WHERE, GROUP BY / HAVING, ORDER BY, LIMIT, INTERSECT / UNION /
EXCEPT, nested subqueries, LIKE / BETWEEN / IN / NOT / IS NULL / EXISTS, string and number
literals, ``*``; keywords in any case. Identifiers come from the database's tables.json entry:
its table names, its column names, ``table.column`` only with a column of that table, and
``alias.column`` with any column of the database.

The limit of a context-free grammar: it cannot check that an alias was declared by ``AS`` in the
query's own FROM clause, nor that a bare column belongs to a table in scope. So aliases are
Spider's convention ``T1``, ``T2``, ... (every alias of the dev gold, all but 6 of the train
gold's 10,149), and a bare or aliased column may be any column of the database. A wrong scope
still fails in SQLite, as before; an identifier that is not in the schema at all can no longer be
written.

Library: llguidance (Rust core, used by vLLM, SGLang and llama.cpp). It takes Lark grammars, so a
grammar per database is a string built here and compiled in milliseconds (xgrammar and outlines
compile EBNF/regex ahead of time per grammar, which suits one fixed JSON schema better than 166
databases; transformers-cfg is pure Python and much slower per token). Its lexer is lazy (only the
lexemes the parser can take next are matched), and it fills a batch's masks on a thread pool
(``LLExecutor``) while the GPU waits for one small copy. Its token trie is checked on a probe
text before use (``token_bytes``), and a row whose matcher fails goes on unconstrained with a
warning (``BatchConstraint``) rather than ending at once.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import weakref

import llguidance
import llguidance.hf
import torch
from llguidance.torch import fill_next_token_bitmask_par

log = logging.getLogger(__name__)

ALIAS_PATTERN = r"[Tt][0-9]+"  # Spider's alias convention: T1, t2, ... (see the module docstring)
KEYWORDS = (
    "SELECT DISTINCT FROM AS JOIN INNER LEFT OUTER CROSS NATURAL ON WHERE GROUP BY HAVING ORDER ASC DESC "
    "LIMIT OFFSET INTERSECT UNION ALL EXCEPT AND OR NOT IN LIKE BETWEEN IS NULL EXISTS"
).split()
AGGREGATES = ("count", "sum", "avg", "min", "max")

# Rules are lower case, terminals upper case; the identifier terminals TABLE, COLUMN, QUALIFIED
# and STAR_QUALIFIED are appended per database by ``sql_grammar``. Whitespace is explicit: `_w`
# (required) between two words, `_o` (optional) next to punctuation. With whitespace ignored, the
# lexer would end a word wherever the next one could start: "singer" + "name" would pass as two
# identifiers and SQLite would read one unknown "singername".
_RULES = r"""
start: query (_o ";")? _o
query: select (set_op select)*
set_op: _w UNION (_w ALL)? _w | _w INTERSECT _w | _w EXCEPT _w
select: SELECT _w select_list _w FROM sources where? group? order? limit?
select_list: (DISTINCT _w)? results | DISTINCT _o "(" _o expr _o ")" (_o "," _o result)*  // "distinct(name)"
results: result (_o "," _o result)*
result: "*" | STAR_QUALIFIED | expr
sources: source (join source (_w ON _w expr)?)*
join: _o "," | _w JOIN | _w INNER _w JOIN | _w LEFT (_w OUTER)? _w JOIN | _w CROSS _w JOIN | _w NATURAL _w JOIN
source: _w TABLE alias? | _o "(" _o query _o ")" alias?
alias: (_w AS)? _w ALIAS
where: _w WHERE _w expr
group: _w GROUP _w BY _w expr (_o "," _o expr)* (_w HAVING _w expr)?
order: _w ORDER _w BY _w ordering (_o "," _o ordering)*
ordering: expr (_w (ASC | DESC))?
limit: _w LIMIT _w NUMBER (_w OFFSET _w NUMBER)?
expr: conjunction (_w OR _w conjunction)*
conjunction: negation (_w AND _w negation)*
negation: (NOT _w)? predicate
predicate: arith comparison?
comparison: _o compare _o arith
    | (_w NOT)? _w BETWEEN _w arith _w AND _w arith
    | (_w NOT)? _w IN _o "(" _o (query | arith (_o "," _o arith)*) _o ")"
    | (_w NOT)? _w LIKE _w arith
    | _w IS (_w NOT)? _w NULL
arith: term (_o ARITH_OP _o term)*
term: factor (_o MUL_OP _o factor)*
factor: ("-" _o)? atom
atom: COLUMN | QUALIFIED | NUMBER | STRING | NULL
    | AGGREGATE _o "(" _o (DISTINCT _o)? (expr | "*") _o ")"
    | "(" _o query _o ")" | "(" _o expr _o ")" | EXISTS _o "(" _o query _o ")"
_o: WS?
_w: WS
compare: COMPARE | SPACED_COMPARE WS? "="  // "> =" as some gold queries have it: the evaluator's clean-up joins it
COMPARE: /!=|<=|>=|<>|==|=|<|>/
SPACED_COMPARE: /[!<>]/
ARITH_OP: "+" | "-" | "||"
MUL_OP: "*" | "/" | "%"
NUMBER: /[0-9]+(\.[0-9]+)?|\.[0-9]+/
STRING: /'([^'\n]|'')*'|"([^"\n]|"")*"/
ALIAS: /ALIAS_PATTERN/
WS: /[ \t\n]+/
""".replace("ALIAS_PATTERN", ALIAS_PATTERN)

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REGEX_META = set(r"\.+*?()|[]{}^$#&-~/")


def _any_case(text: str) -> str:
    """A regex for ``text`` in any letter case: ASCII letters as [xX] (``(?i)`` would also fold
    Unicode, e.g. the long s 'ſ' matching 's'), regex and Lark meta characters escaped."""
    out = []
    for char in text:
        if char.isascii() and char.isalpha():
            out.append(f"[{char.lower()}{char.upper()}]")
        elif char in _REGEX_META:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _name_forms(name: str) -> str:
    """A regex for one identifier as a query may write it: bare (when SQLite allows that), or in
    double quotes, backticks or brackets, in any case."""
    forms = [f'"{_any_case(name)}"', f"`{_any_case(name)}`", rf"\[{_any_case(name)}\]"]
    if _PLAIN.match(name):
        forms.insert(0, _any_case(name))
    return "|".join(forms)


def _alternatives(names) -> str:
    # longest first: not needed by the lexer (it matches all at once), but keeps the text stable
    return "|".join(f"(?:{_name_forms(name)})" for name in sorted(set(names), key=lambda n: (-len(n), n)))


def schema_names(schema: dict) -> tuple[list[str], dict[str, list[str]]]:
    """(table names, table -> its column names) of one tables.json entry, original spelling."""
    tables = list(schema["table_names_original"])
    columns: dict[str, list[str]] = {table: [] for table in tables}
    for table_index, column in schema["column_names_original"]:
        if table_index >= 0:  # -1 is the "*" pseudo-column
            columns[tables[table_index]].append(column)
    return tables, columns


def sql_grammar(schema: dict) -> str:
    """The Lark grammar of Spider's SQL over one database (a tables.json entry); see the module docstring."""
    tables, columns = schema_names(schema)
    every_column = [column for table in tables for column in columns[table]]
    qualified = [f"(?:{ALIAS_PATTERN})\\.(?:{_alternatives(every_column)})"] + [
        f"(?:{_name_forms(table)})\\.(?:{_alternatives(columns[table])})" for table in tables if columns[table]
    ]
    qualifiers = "|".join([ALIAS_PATTERN] + [_name_forms(table) for table in tables])
    keywords = "\n".join(f"{word}: /{_any_case(word)}/" for word in KEYWORDS)
    return (
        _RULES
        + keywords
        + f"\nAGGREGATE: /{'|'.join(_any_case(name) for name in AGGREGATES)}/"
        + f"\nTABLE: /{_alternatives(tables)}/"
        + f"\nCOLUMN: /{_alternatives(every_column)}/"
        + f"\nQUALIFIED: /{'|'.join(qualified)}/"
        + f"\nSTAR_QUALIFIED: /(?:{qualifiers})\\.\\*/\n"
    )


class GrammarError(ValueError):
    """A database's grammar did not compile; the message names the database."""


class TokenBytesError(ValueError):
    """llguidance cannot read a tokenizer's tokens as the bytes they stand for."""


# Text with every kind of byte a SQL answer holds: spaces, newline, tab, quotes, punctuation, non-ASCII.
_PROBE = "SELECT T1.name, count(*) FROM singer AS T1\n\tWHERE x = 'Zoë' AND y <> \"東京\" LIMIT 1;"


def _reads_probe(ll_tokenizer, tokenizer) -> bool:
    ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    return ll_tokenizer.decode_bytes(ids) == _PROBE.encode()


def _has_byte_level(component: dict | None) -> bool:
    """Whether a tokenizer.json pre-tokenizer (or a Sequence of them) contains a ByteLevel step."""
    if not component:
        return False
    parts = component.get("pretokenizers") or component.get("decoders") or [component]
    return any(part and part.get("type") == "ByteLevel" for part in parts)


def token_bytes(tokenizer, stop_id: int):
    """llguidance's tokenizer (``LLTokenizer``: the bytes of every token id, its token trie) of a
    fast HF tokenizer, checked on a probe text: decoding its token ids must give its bytes back.

    llguidance tells byte-level BPE (GPT-2 style: "Ġ" stands for a space byte) from
    sentencepiece-style tokens by the tokenizer.json decoder. transformers 5.17 converts
    SmolLM2's GGUF tokenizer (byte-level BPE) with the decoder Sequence[ByteFallback, Fuse,
    Replace, ByteLevel], which llguidance reads as sentencepiece: "Ġname" becomes the bytes
    'Ġname', no token holds a space, and every constrained answer stopped after its first word.
    A byte-level pre-tokenizer with a decoder llguidance misreads gets the plain ByteLevel decoder
    (which is what decodes the tokens in the end), then the probe is checked again.

    Raises TokenBytesError when the probe still does not come back.
    """
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=stop_id)
    if _reads_probe(ll_tokenizer, tokenizer):
        return ll_tokenizer
    backend = copy.copy(tokenizer.backend_tokenizer)  # as llguidance.hf: no padding or truncation in the JSON
    backend.no_padding()
    backend.no_truncation()
    spec = json.loads(backend.to_str())
    if _has_byte_level(spec.get("pre_tokenizer")):
        spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        ll_tokenizer = llguidance.LLTokenizer(json.dumps(spec), eos_token=stop_id)
        if _reads_probe(ll_tokenizer, tokenizer):
            log.info("constrained decoding reads the tokenizer as byte-level BPE (its decoder %s is not plain ByteLevel)",
                     json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder"))[:200])
            return ll_tokenizer
    raise TokenBytesError(
        f"llguidance reads the tokens of {type(tokenizer).__name__} {getattr(tokenizer, 'name_or_path', '')!r} as other "
        f"bytes than they decode to ({_PROBE!r} comes back as {ll_tokenizer.decode_bytes(tokenizer(_PROBE, add_special_tokens=False)['input_ids'])!r}); "
        "generation.constrained cannot be used with this tokenizer"
    )


class SchemaGrammars:
    """Compiled grammars of one tokenizer, one per database, built on first use and kept.

    ``stop_id`` is the token that ends an answer (the chat template's end of turn): the grammar
    allows it once the SQL is complete, and nothing after it.

    ``released_rows``: how many rows so far went on unconstrained because their matcher failed
    (``BatchConstraint``); a warning is logged for the first.
    """

    def __init__(self, tokenizer, stop_id: int):
        self.stop_id = stop_id
        self.tokenizer = token_bytes(tokenizer, stop_id)
        self.words = (self.tokenizer.vocab_size + 31) // 32  # int32 words of one row's bitmask
        self._compiled: dict[str, object] = {}  # grammar text -> LLMatcher at its start state
        self.executor = llguidance.LLExecutor()  # fills a batch's masks on a thread pool
        self.released_rows = 0

    def release(self, reason: str) -> None:
        """Count a row that goes on unconstrained; the first one's reason is logged as a warning."""
        if self.released_rows == 0:
            log.warning(
                "constrained decoding: a row's grammar matcher failed, the row goes on unconstrained "
                "(further ones are counted, not logged): %s", reason.strip()[:2000],
            )
        self.released_rows += 1

    def matcher(self, schema: dict):
        """A fresh matcher (at the start of an answer) for one database's tables.json entry."""
        grammar = sql_grammar(schema)
        compiled = self._compiled.get(grammar)
        if compiled is None:
            compiled = llguidance.LLMatcher(
                self.tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
            )
            if compiled.is_error():
                raise GrammarError(f"the SQL grammar of database {schema.get('db_id')!r} does not compile: {compiled.get_error()}")
            self._compiled[grammar] = compiled
        return compiled.deep_copy()

    def accepts(self, schema: dict, token_ids: list[int]) -> bool:
        """Whether an answer's tokens (without the stop token) are a complete query of the grammar."""
        matcher = self.matcher(schema)
        return matcher.consume_tokens(list(token_ids) + [self.stop_id]) and not matcher.is_error()

    def constraint(self, schemas: list[dict]) -> BatchConstraint:
        """A constraint for a batch whose row i answers a question on database ``schemas[i]``."""
        return BatchConstraint(self, [self.matcher(schema) for schema in schemas])


class BatchConstraint:
    """The grammar state of every row of one batch: masks for the next token, advanced by the chosen ones.

    A row whose matcher fails (it rejects the chosen token, or errs computing a mask) is released:
    from then on its mask allows every token, so the row decodes on as unconstrained greedy
    instead of being stopped by the error state's mask (which allows only the stop token).
    ``released``: those rows. None should fail; a failure means the mask and the matcher disagree.
    """

    def __init__(self, grammars: SchemaGrammars, matchers: list):
        self.grammars, self.matchers = grammars, matchers
        self._bitmask = torch.empty((len(matchers), grammars.words), dtype=torch.int32)
        self.released: set[int] = set()

    def _release(self, row: int, reason: str) -> None:
        self.released.add(row)
        self.grammars.release(f"row {row}: {reason}")

    def bitmask(self, rows: list[int]) -> torch.Tensor:
        """Allowed next tokens of the given rows, shape (len(rows), words) int32 on the CPU: bit
        ``t % 32`` of word ``t // 32`` is set when token t is allowed. Masks of all rows are filled
        in parallel by llguidance's thread pool. A row whose answer ended allows only the stop
        token; a released row allows every token."""
        out = self._bitmask[: len(rows)]
        constrained = [(self.matchers[row], index) for index, row in enumerate(rows) if row not in self.released]
        if constrained:  # llguidance refuses an empty batch
            fill_next_token_bitmask_par(self.grammars.executor, constrained, out)
        for matcher, index in constrained:
            if matcher.is_error():
                self._release(rows[index], matcher.get_error())
        for index, row in enumerate(rows):
            if row in self.released:
                out[index] = -1
        return out

    def advance(self, rows: list[int], tokens: list[int]) -> None:
        """Feed each row its chosen token (rows whose answer already ended, or released, are left as they are)."""
        for row, token in zip(rows, tokens):
            matcher = self.matchers[row]
            if row in self.released or matcher.is_stopped():
                continue
            if not matcher.consume_token(token) or matcher.is_error():
                self._release(row, f"token {token} rejected: {matcher.get_error()}")


def mask_logits(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """``logits`` (rows, vocab) with every token whose bit is clear in ``bitmask`` (rows, words)
    set to -inf; tokens past 32 x words (a model's padded vocabulary) are disallowed too. Static
    shapes only, no host sync: it runs inside a captured CUDA graph."""
    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)  # (rows, 32 x words)
    vocab = logits.shape[-1]
    if allowed.shape[1] >= vocab:
        allowed = allowed[:, :vocab]
    else:
        allowed = torch.cat([allowed, allowed.new_zeros(allowed.shape[0], vocab - allowed.shape[1])], dim=1)
    return logits.masked_fill(~allowed, float("-inf"))


def answer_stop_id(tokenizer) -> int:
    """The token a constrained answer ends with: the chat template's end of turn, else eos."""
    from ray_spider.model import end_of_turn_token

    eot = end_of_turn_token(tokenizer)
    return tokenizer.convert_tokens_to_ids(eot) if eot else tokenizer.eos_token_id


_GRAMMARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def grammars_for(tokenizer) -> SchemaGrammars:
    """The ``SchemaGrammars`` of a tokenizer, made once per tokenizer object (training's dev
    rounds reuse the compiled grammars of earlier rounds)."""
    grammars = _GRAMMARS.get(tokenizer)
    if grammars is None:
        grammars = _GRAMMARS[tokenizer] = SchemaGrammars(tokenizer, answer_stop_id(tokenizer))
    return grammars


class GrammarLogitsProcessor:
    """The constraint as a transformers logits processor, for ``model.generate`` (greedy, beam
    search, sampling): ``generate(..., logits_processor=LogitsProcessorList([processor]))``.

    Row r of the expanded batch (``num_beams`` or ``num_return_sequences`` rows per prompt)
    answers prompt ``r // expansion``. Beam search reorders and forks rows between steps, so a
    row's grammar state is looked up by its answer so far: the state of its answer minus the last
    token (kept from the previous step) advanced by that token.
    """

    def __init__(self, grammars: SchemaGrammars, schemas: list[dict], prompt_width: int):
        self.grammars, self.schemas, self.prompt_width = grammars, schemas, prompt_width
        self._states: dict[tuple, object] = {}  # (prompt, answer tokens) -> matcher after them
        self.released: set[int] = set()  # prompts with a failed matcher: their rows go on unconstrained

    def _state(self, prompt: int, answer: tuple[int, ...]):
        key = (prompt, answer)
        if key not in self._states:
            if not answer:
                self._states[key] = self.grammars.matcher(self.schemas[prompt])
            else:
                matcher = self._state(prompt, answer[:-1]).deep_copy()
                if not matcher.is_stopped():  # after the stop token generate pads: nothing to check
                    matcher.consume_token(answer[-1])
                self._states[key] = matcher
        return self._states[key]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        expansion = input_ids.shape[0] // len(self.schemas)
        answers = input_ids[:, self.prompt_width :].tolist()
        keys = [(row // expansion, tuple(answer)) for row, answer in enumerate(answers)]
        unique = list(dict.fromkeys(keys))  # rows with equal answers share a matcher: one mask each
        matchers = [self._state(*key) for key in unique]
        self._states = {key: self._states[key] for key in unique}  # the next step's parents
        bitmask = torch.empty((len(unique), self.grammars.words), dtype=torch.int32)
        fill_next_token_bitmask_par(self.grammars.executor, [(matcher, row) for row, matcher in enumerate(matchers)], bitmask)
        for row, (key, matcher) in enumerate(zip(unique, matchers)):
            if matcher.is_error():  # its mask would allow only the stop token: see BatchConstraint
                bitmask[row] = -1
                if key[0] not in self.released:
                    self.released.add(key[0])
                    self.grammars.release(f"prompt {key[0]}: {matcher.get_error()}")
        position = {key: row for row, key in enumerate(unique)}
        rows = torch.tensor([position[key] for key in keys])
        return mask_logits(scores, bitmask[rows].to(scores.device))
