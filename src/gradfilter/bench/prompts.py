"""The test prompt sets of the judge and human benchmarks (evaluation.md §3).

The five test sets of Superfiltering / Cherry (vicuna, koala, wizardlm, sinstruct, lima), or any
JSONL file with a prompt field; each prompt is named `<test set>-<position>`. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GradfilterError

TEST_SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
# The field holding the prompt, looked for in this order in a file's first record.
PROMPT_FIELDS = ("text", "prompt", "Instruction", "instruction", "conversations")


@dataclass(frozen=True)
class Prompt:
    """One test prompt; `id` is `<test set>-<position>` (0-based record position in its file)."""

    id: str
    test_set: str
    text: str


def default_prompt_files(directory: Path) -> list[Path]:
    """The five test sets of Superfiltering / Cherry in `directory`, in their usual order."""
    return [Path(directory) / f"{name}_test_set.jsonl" for name in TEST_SETS]


def prompt_set_name(path: Path) -> str:
    """`vicuna_test_set.jsonl` -> `vicuna`; any other file: its name without `.jsonl`."""
    return Path(path).name.removesuffix(".jsonl").removesuffix("_test_set")


def load_prompts(path: Path, limit: int | None = None) -> list[Prompt]:
    """The prompts of a JSONL file, the field detected from its first record (PROMPT_FIELDS).

    `instruction` records (Self-Instruct) take their first `instances[].input` as an Alpaca
    record does: `instruction + "\\n" + input` when the input is not empty. `conversations` is
    a string or a list whose first element (a string, or a turn with `value`/`content`) is the
    prompt. Blank lines are skipped. `limit` keeps the first N prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise GradfilterError(f"{path}: no such prompts file")
    name = prompt_set_name(path)
    prompts: list[Prompt] = []
    field: str | None = None
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if limit is not None and len(prompts) >= limit:
                break
            if not line.strip():
                continue
            record = json_object(path, line_number, line)
            if field is None:
                field = _detect_field(path, line_number, record)
            text = _prompt_text(path, line_number, record, field)
            prompts.append(Prompt(f"{name}-{len(prompts)}", name, text))
    if not prompts:
        raise GradfilterError(f"{path}: no prompts in the file")
    return prompts


def json_object(path: Path, line_number: int, line: str) -> dict:
    """One line of a JSON Lines file as an object, or a one-line error naming the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise GradfilterError(f"{path}: line {line_number}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise GradfilterError(f"{path}: line {line_number}: not a JSON object")
    return record


def _detect_field(path: Path, line_number: int, record: dict) -> str:
    for field in PROMPT_FIELDS:
        if field in record:
            return field
    raise GradfilterError(
        f"{path}: line {line_number}: no prompt field (looked for {', '.join(PROMPT_FIELDS)}; "
        f"the record has {', '.join(map(str, record)) or 'no fields'})"
    )


def _prompt_text(path: Path, line_number: int, record: dict, field: str) -> str:
    def bad(problem: str, where: str = field) -> GradfilterError:
        return GradfilterError(f"{path}: line {line_number}: field '{where}': {problem}")

    if field not in record:
        raise bad("missing (the file's first record has it)")
    value = record[field]
    if field == "conversations" and isinstance(value, list):
        if not value:
            raise bad("an empty list")
        value = value[0]
        if isinstance(value, dict):
            value = value.get("value", value.get("content"))
    if not isinstance(value, str) or not value.strip():
        raise bad(f"not a non-empty string ({type(value).__name__})")
    if field == "instruction" and "instances" in record:
        value = _with_input(value, record["instances"], bad)
    return value


def _with_input(instruction: str, instances: Any, bad: Callable[..., GradfilterError]) -> str:
    """Self-Instruct: the first instance's input after the instruction, as an Alpaca record."""
    if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
        raise bad("not a list of {input, output} objects", "instances")
    text = instances[0].get("input") or ""
    if not isinstance(text, str):
        raise bad("input is not a string", "instances")
    return f"{instruction}\n{text}" if text else instruction
