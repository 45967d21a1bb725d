"""Shared prompt prefixes: the system prompt and schema of a database are read once per batch.

Every question of a Spider database renders to the same tokens up to its question (chat header,
system prompt, schema, "Question: "), most of the prompt. With ``generation.prefix_cache``
(engine pruned), ``inference.generate`` orders the prompts so that those sharing a prefix fill
batches together (``batch_order``); for each batch, ``inference.prefill_shared_prefixes`` runs
every distinct prefix once and copies its KV cache to the rows that share it, and
``inference.greedy_pruned`` reads only the rest of each prompt (question and template tail) in its
first step. This is the idea of vLLM's automatic prefix caching and SGLang's RadixAttention
without their paged KV memory: each row still holds its own copy of the prefix's keys and values,
so decoding is unchanged; only the prompt's compute is shared.

Groups come from the token ids, not from a database id (``prefix_groups``): what two prompts
share is what their tokenizations share, whatever the template.

``SharedPrefixBatch`` lays a batch out as (P: the longest shared prefix in the batch, S: the
longest rest)

    row r:  [pad ... pad | prefix of r's group] [pad ... pad | rest of r]
             <------------------ P ------------------> <-------- S -------->

so the pad gap sits between a row's prefix and its rest. Position ids count real tokens only
(``greedy_pruned`` derives them from the attention mask), so each token gets the position it has
in the unshared, left-padded prompt, and the answers are those without prefix caching up to float
rounding (the same tokens in the tests on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Neighbours in token order join a group when they share at least this share of the shorter
# prompt. Questions of one Spider database share their whole schema (most of the prompt); prompts
# of two databases share only the chat header and system prompt, and joining those would leave
# long rests to read in every row.
MIN_SHARED = 0.5


@dataclass(frozen=True)
class PrefixGroup:
    """Rows (indices into the rows given) whose first ``prefix_length`` token ids are the same."""

    prefix_length: int
    members: list[int]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids ``a`` and ``b`` share."""
    return next((index for index, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def prefix_groups(rows: Sequence[Sequence[int]]) -> list[PrefixGroup]:
    """The rows (token id lists) split into groups that share a prefix, in token order.

    Sorted by token ids, rows with a common prefix are neighbours, and a run of neighbours shares
    the least of its neighbours' common prefixes. A run continues while neighbours share at least
    MIN_SHARED of the shorter row. A group's prefix stops at least one token before each member's
    end, since the last token's logits give the first answer token: a row alone shares all but
    its last token with itself, so its prompt is read in the prefix forward.
    """
    order = sorted(range(len(rows)), key=lambda index: rows[index])
    runs: list[list[int]] = []
    shared: list[int] = []
    for previous, index in zip([None, *order], order):
        common = 0 if previous is None else common_prefix_length(rows[previous], rows[index])
        if previous is not None and common >= MIN_SHARED * min(len(rows[previous]), len(rows[index])):
            runs[-1].append(index)
            shared[-1] = min(shared[-1], common)
        else:
            runs.append([index])
            shared.append(len(rows[index]))
    return [
        PrefixGroup(min(length, min(len(rows[index]) for index in members) - 1), members)
        for length, members in zip(shared, runs)
    ]


def batch_order(rows: Sequence[Sequence[int]]) -> list[int]:
    """Indices of ``rows`` in generation order: each group together (so a batch holds few groups),
    groups longest prefix first and rows longest first within a group (so a batch holds rows of
    similar length, as when ordering longest first without prefix caching)."""
    groups = sorted(prefix_groups(rows), key=lambda group: (-group.prefix_length, min(group.members)))
    return [index for group in groups for index in sorted(group.members, key=lambda index: (-len(rows[index]), index))]


def _left_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (len(sequences), longest), each sequence at the right end."""
    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            mask[row, width - len(sequence) :] = 1
    return ids, mask


@dataclass(frozen=True)
class SharedPrefixBatch:
    """A batch of prompts as shared prefixes and rests (layout in the module docstring).

    Shapes: G distinct prefixes, R rows, P the longest prefix, S the longest rest.
    """

    prefix_ids: torch.Tensor  # (G, P) each group's prefix, left-padded
    prefix_mask: torch.Tensor  # (G, P) 1 on the prefix's tokens
    group_of_row: torch.Tensor  # (R,) the prefix row of each row
    rest_ids: torch.Tensor  # (R, S) each row after its prefix, left-padded
    attention_mask: torch.Tensor  # (R, P + S) its group's prefix_mask, then its rest's

    @classmethod
    def of(cls, rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> SharedPrefixBatch:
        """The layout of ``rows`` (token id lists, each at least 2 tokens), grouped by ``prefix_groups``."""
        if any(len(row) < 2 for row in rows):
            raise ValueError("a prompt of fewer than 2 tokens has no prefix to share; generate it without prefix caching")
        groups = prefix_groups(rows)
        group_of_row = [0] * len(rows)
        for number, group in enumerate(groups):
            for index in group.members:
                group_of_row[index] = number
        prefix_ids, prefix_mask = _left_padded([rows[group.members[0]][: group.prefix_length] for group in groups], pad_id)
        rest_ids, rest_mask = _left_padded([row[groups[group_of_row[index]].prefix_length :] for index, row in enumerate(rows)], pad_id)
        group_of_row = torch.tensor(group_of_row, dtype=torch.long)
        return cls(
            prefix_ids=prefix_ids.to(device),
            prefix_mask=prefix_mask.to(device),
            group_of_row=group_of_row.to(device),
            rest_ids=rest_ids.to(device),
            attention_mask=torch.cat([prefix_mask[group_of_row], rest_mask], dim=1).to(device),
        )
