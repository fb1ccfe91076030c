"""`gradfilter inspect`: what a dataset holds and every problem in it, without a model.

Streams the data once; memory holds counters, one small integer array per length statistic
(8 bytes a record) and the problem lines, never the records. A place the reader cannot read (a
malformed JSONL line, say) is one more problem, not a stop.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GradfilterError
from . import conversations, quality, readers, sources
from .conversations import Format
from .readers import ReadReport

PERCENTILES = (0, 10, 50, 90, 99, 100)
# Text that looks like a model's special token (no tokenizer here): `<|...|>` (GPT-2, ChatML,
# Llama 3), DeepSeek's full-width bars, `<s>` `</s>` `<unk>` `<pad>` `<bos>` `<eos>` `<mask>`,
# Llama 2's `[INST]` `<<SYS>>`, BERT's `[CLS]` `[SEP]`, Gemma's turn markers. Scoring tokenises
# such text as plain text; inspect counts the records that hold it.
SPECIAL_TOKEN_TEXT = re.compile(
    r"<\|[\w.:-]{1,40}\|>|<\uff5c[^\uff5c\s]{1,40}\uff5c>|</?s>|<(?:unk|pad|bos|eos|mask)>"
    r"|\[/?INST\]|<</?SYS>>|\[(?:CLS|SEP|PAD|MASK|UNK)\]|<(?:start|end)_of_turn>")


@dataclass
class Inspection:
    path: Path
    container: str
    format: str
    records: int = 0
    roles: Counter = field(default_factory=Counter)
    turns_per_record: array = field(default_factory=lambda: array("q"))
    response_chars: array = field(default_factory=lambda: array("q"))
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Records read leniently: a role in another case or with spaces (`Human`, ` gpt `).
    role_variants: int = 0
    first_role_variant: int | None = None
    # Records whose text looks like a special token (scored as plain text): how many, and the
    # first (record, the text).
    special_token_text: int = 0
    first_special_token: tuple[int, str] | None = None
    duplicate_keys: int = 0  # records with a key twice in one object (also in problems)
    empty_replies: int = 0  # records with an empty answering turn (also in problems)
    copies: quality.Copies | None = None  # records that repeat an earlier one exactly

    def percentiles(self, values: array | list[int]) -> dict[int, int]:
        if not len(values):
            return {}
        points = np.percentile(np.asarray(values, dtype=np.int64), PERCENTILES,
                               method="nearest")
        return dict(zip(PERCENTILES, (int(v) for v in points), strict=True))


def inspect_dataset(path: str | Path, fmt: Format | None = None,
                    fields: dict[str, str] | None = None, split: str | None = None) -> Inspection:
    source = sources.resolve_source(path, split)
    report = ReadReport()
    ids = readers.IdTracker()
    copies = quality.CopyCounter()
    result = Inspection(source.label, source.container, fmt or "")
    for record in readers.iter_records(source, report, skip_bad_records=True):
        result.records += 1
        if record.error is not None:
            result.problems.append(record.error)
            continue
        if not result.format:
            result.format = conversations.detect_format(record, source, fields)
        _check_id(record, ids, result, source)
        keys = quality.repeated_keys(record.raw, record.data)
        if keys:
            result.duplicate_keys += 1
            result.problems.append(quality.repeated_keys_problem(
                f"{source}: record {record.index}", keys))
        try:
            turns = conversations.to_turns(record, result.format, source, fields)  # type: ignore[arg-type]
        except GradfilterError as exc:
            result.problems.append(str(exc))
            continue
        _count_turns(record.index, turns, result, source)
        _count_special_text(record.index, turns, result)
        copies.add(record.index, turns)
        if conversations.has_role_variants(record, result.format, fields):  # type: ignore[arg-type]
            result.role_variants += 1
            if result.first_role_variant is None:
                result.first_role_variant = record.index
    if result.records == 0:
        raise GradfilterError(f"{source}: the dataset holds no records")
    if not result.format:
        raise GradfilterError(f"no record of {source} could be read; the first: "
                              f"{result.problems[0]}")
    result.warnings = report.warnings
    result.copies = copies.copies(result.records)
    if result.copies.mostly:  # a warning, not a problem: each copy is a good record
        result.warnings.append(f"{source}: the dataset is mostly copies of one record: "
                               f"{result.copies.line()}")
    return result


def _check_id(record, ids: readers.IdTracker, result: Inspection, path: object) -> None:
    earlier = ids.see(record)
    if earlier is not None:
        result.problems.append(
            f"{path}: record {record.index}: field 'id': duplicate of record {earlier} "
            f"({record.data['id']!r}; both are kept)")


def _count_special_text(index: int, turns: list[conversations.Turn],
                        result: Inspection) -> None:
    found = next((m for turn in turns if (m := SPECIAL_TOKEN_TEXT.search(turn.text))), None)
    if found is not None:
        result.special_token_text += 1
        if result.first_special_token is None:
            result.first_special_token = (index, found.group())


def _count_turns(index: int, turns: list[conversations.Turn], result: Inspection,
                 path: object) -> None:
    result.turns_per_record.append(len(turns))
    result.roles.update(turn.role for turn in turns)
    result.response_chars.extend(len(turns[k].text) for k in conversations.answering_turns(turns))
    where = f"{path}: record {index}"
    reason = conversations.unscorable_reason(turns)
    empty = quality.empty_replies(turns)
    if empty:
        result.empty_replies += 1
        result.problems.append(quality.empty_reply_problem(where, empty, len(turns)))
    if reason is not None:
        result.problems.append(f"{where}: {reason} (not scored)")
    elif conversations.ends_on_prompt(turns):
        result.problems.append(f"{where}: ends on a {turns[-1].role} turn (the tail is prompt "
                               "with no answer; it carries no loss)")
