from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_proxy


@pytest.fixture(scope="session")
def gpt2_proxy(tmp_path_factory) -> str:
    return make_proxy(tmp_path_factory.mktemp("gpt2"), "gpt2")


@pytest.fixture(scope="session")
def llama_proxy(tmp_path_factory) -> str:
    return make_proxy(tmp_path_factory.mktemp("llama"), "llama", chat=True)


def alpaca_records(n: int) -> list[dict]:
    """Alpaca records of varied lengths, some with an input, some with unicode."""
    records = []
    for i in range(n):
        record = {"instruction": f"Give {i} tips for staying healthy" + " please" * (i % 4)}
        record["input"] = "" if i % 3 else f"café {i} 日本語"
        record["output"] = "Eat a balanced diet and sleep well. " * (1 + i % 5) + str(i)
        records.append(record)
    return records


def sharegpt_records(n: int) -> list[dict]:
    records = []
    for i in range(n):
        turns = [{"from": "human", "value": f"Question {i}: what is {i} + {i}?"},
                 {"from": "gpt", "value": f"It is {2 * i}. " * (1 + i % 3)}]
        if i % 2:
            turns = [{"from": "system", "value": "Be brief."}, *turns,
                     {"from": "human", "value": "And times two?"},
                     {"from": "gpt", "value": f"{4 * i} 🙂"}]
        records.append({"id": f"conv-{i}", "conversations": turns})
    return records


def messages_records(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": t["value"]} if t["from"] == "human" else
                      {"role": "system" if t["from"] == "system" else "assistant",
                       "content": t["value"]} for t in r["conversations"]],
         "meta": {"n": i}}
        for i, r in enumerate(sharegpt_records(n))
    ]


def prompt_completion_records(n: int) -> list[dict]:
    """TRL prompt/completion, half as strings, half as message lists."""
    records = []
    for i in range(n):
        if i % 2:
            records.append({"prompt": [{"role": "user", "content": f"Count to {i}."}],
                            "completion": [{"role": "assistant", "content": " ".join(
                                str(k) for k in range(i + 1))}]})
        else:
            records.append({"prompt": f"Spell {i} in words: ", "completion": f"number {i} ✓"})
    return records


def write_records_as(path: Path, records: list[dict]) -> Path:
    """Write records in the container its name says: .json, .jsonl (+ .gz) or .parquet."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), path)
        return path
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=2)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_records_as(path: Path) -> list[dict]:
    import gzip

    import pyarrow.parquet as pq

    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    text = data.decode("utf-8")
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def cli_process(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run `gradfilter ARGS...` in a subprocess (as a user would): its exit code and output."""
    return subprocess.run([sys.executable, "-c", "from gradfilter.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def run_cli(*args: object) -> tuple[int, str, str]:
    """Run `gradfilter ARGS...` in this process through the real entry point (`main`):
    (exit code, stdout, stderr)."""
    import contextlib
    import io

    from gradfilter.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["gradfilter", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def records_alive(monkeypatch) -> list[int]:
    """Wraps readers.iter_records; after each record it gave, appends how many of the records
    given so far are still held by anyone (1: only the one in hand)."""
    import weakref

    from gradfilter.data import readers

    alive: list[int] = []
    read = readers.iter_records

    def watched(*args, **kwargs):
        given: list[weakref.ref] = []
        for record in read(*args, **kwargs):
            given.append(weakref.ref(record))
            yield record
            del record
            alive.append(sum(ref() is not None for ref in given))

    monkeypatch.setattr(readers, "iter_records", watched)
    return alive


def column_values(table, name: str):
    """A statistics column as numpy float64: [rows] for a number column, [rows, dim] for a
    fixed-size list column (the sketches), NaN where null."""
    import numpy as np
    import pyarrow as pa

    array = table.column(name).combine_chunks()
    if not pa.types.is_fixed_size_list(array.type):
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
    values = array.values.to_numpy(zero_copy_only=False).astype(np.float64)
    values = values.reshape(len(array), array.type.list_size)
    values[np.asarray(array.is_null().to_numpy(zero_copy_only=False))] = np.nan
    return values
