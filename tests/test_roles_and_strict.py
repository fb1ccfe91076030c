"""Role names as people write them (`Human`, `GPT`, `USER`, ` assistant `) read as the
canonical role and are reported; truly unknown roles stay an error. `inspect --strict` exits 1
on any problem, so it can gate a pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl

from gradfilter.data.inspect import inspect_dataset


def _sharegpt(user: str, assistant: str, system: str = "system") -> dict:
    return {"conversations": [{"from": system, "value": "Be brief."},
                              {"from": user, "value": "What is 2 + 2?"},
                              {"from": assistant, "value": "It is 4."}]}


def _messages(user: str, assistant: str) -> dict:
    return {"messages": [{"role": user, "content": "What is 2 + 2?"},
                         {"role": assistant, "content": "It is 4."}]}


VARIANTS = {
    "sharegpt": (_sharegpt, [("Human", "GPT", "System"), ("USER", " assistant ", "SYSTEM"),
                             (" human\t", "ChatGPT\n", " system")]),
    "messages": (_messages, [("User", "ASSISTANT"), (" user ", "Assistant ")]),
}


@pytest.mark.parametrize("fmt", list(VARIANTS))
def test_role_names_in_another_case_or_with_spaces_read_as_canonical(tmp_path, gpt2_proxy, fmt):
    make, variants = VARIANTS[fmt]
    canonical = make("user", "assistant") if fmt == "messages" else make("human", "gpt")
    records = [canonical, *(make(*roles) for roles in variants), canonical]
    data = write_jsonl(tmp_path / "d.jsonl", records)

    found = inspect_dataset(data)
    assert found.problems == []
    assert found.role_variants == len(variants) and found.first_role_variant == 1
    code, out, err = run_cli("inspect", data, "--strict")
    assert code == 0, err
    assert (f"note: {len(variants)} records had role names in another case or with spaces "
            "(read as canonical; the first: record 1)") in out

    stats = tmp_path / "s.parquet"
    code, _, err = run_cli("score", data, "--out", stats, "--method", "length", "--proxy",
                           gpt2_proxy, "--quiet")
    assert code == 0, err
    assert f"{len(variants)} records had role names in another case or with spaces" in err
    record = json.loads(stats.with_name(stats.name + ".run.json").read_text())
    assert record["role_variants"] == list(range(1, len(variants) + 1))
    table = pq.read_table(stats)
    assert table.column("skip_reason").null_count == len(records)
    tokens = table.column("n_response_tokens").to_pylist()
    assert tokens == [tokens[0]] * len(records)  # the same turns as the canonical record


UNKNOWN = {"robot": "unknown role 'robot'", "Hu man": "unknown role 'Hu man'",
           "": "unknown role ''", "7": "unknown role 7", "list": "unknown role ['human']"}


@pytest.mark.parametrize("role", list(UNKNOWN))
def test_unknown_roles_stay_a_clear_error(tmp_path, gpt2_proxy, role):
    value = {"7": 7, "list": ["human"]}.get(role, role)
    bad = {"conversations": [{"from": value, "value": "hi"}, {"from": "gpt", "value": "ok"}]}
    data = write_jsonl(tmp_path / "d.jsonl", [_sharegpt("human", "gpt"), bad])
    expected = f"{data}: record 1: field 'conversations[0].from': {UNKNOWN[role]}"
    stats = tmp_path / "s.parquet"
    code, _, err = run_cli("score", data, "--out", stats, "--method", "length", "--proxy",
                           gpt2_proxy, "--quiet")
    assert (code, err) == (2, f"error: {expected}\n")
    code, _, err = run_cli("score", data, "--out", stats, "--method", "length", "--proxy",
                           gpt2_proxy, "--quiet", "--skip-bad-records")
    assert code == 0, err
    assert pq.read_table(stats).column("skip_reason").to_pylist() == [
        None, f"invalid record: {expected}"]


# --- inspect --strict --------------------------------------------------------------------------

def test_strict_exits_1_on_any_problem_and_0_on_none(tmp_path):
    clean = write_jsonl(tmp_path / "clean.jsonl", alpaca_records(3))
    one = write_jsonl(tmp_path / "one.jsonl", [*alpaca_records(2), {"instruction": "x"}])
    two = write_jsonl(tmp_path / "two.jsonl", [*alpaca_records(2), {"instruction": "x"},
                                               {"output": "y", "instruction": 3}])
    assert run_cli("inspect", clean, "--strict")[0] == 0
    code, out, _ = run_cli("inspect", one, "--strict")
    assert code == 1
    assert "\n1 problem\n" in out and "1 problems" not in out
    assert "record 2: field 'output': is missing" in out
    code, out, _ = run_cli("inspect", two, "--strict")
    assert code == 1 and "\n2 problems\n" in out
    assert run_cli("inspect", two)[0] == 0  # without --strict a report is not a failure


def test_strict_gates_a_shell_pipeline(tmp_path):
    clean = write_jsonl(tmp_path / "clean.jsonl", alpaca_records(3))
    bad = write_jsonl(tmp_path / "bad.jsonl", [*alpaca_records(2), {"instruction": "x"}])
    gradfilter = f"{sys.executable} -m gradfilter"
    for data, ran in ((clean, True), (bad, False)):
        marker = tmp_path / "ran"
        marker.unlink(missing_ok=True)
        subprocess.run(f"{gradfilter} inspect {data} --strict > /dev/null && touch {marker}",
                       shell=True, timeout=120, check=False)
        assert marker.exists() == ran, data
