"""The one conversation rule: which turns are prompt, which carry loss, which answer a prompt.

Scoring, inspection, the run record and the noise benchmark all ask it; each case is pinned
here and checked where it is used.
"""

from __future__ import annotations

import json

import pytest

from gradfilter.data.conversations import (
    Turn,
    answering_turns,
    ends_on_prompt,
    loss_turns,
    prompt_of,
    unscorable_reason,
)
from gradfilter.data.exchanges import ExchangeReport, exchanges

S, U, A = "system", "user", "assistant"
CASES = [
    # roles, answering turns, unscorable reason, ends on a prompt
    ([], [], "empty conversation", False),
    ([U], [], "no assistant turn after a prompt", False),
    ([S], [], "no assistant turn after a prompt", False),
    ([A], [], "no assistant turn after a prompt", False),
    ([U, A], [1], None, False),
    ([S, A], [1], None, False),  # a system prompt is a prompt: scored and corruptible
    ([A, U], [], "no assistant turn after a prompt", False),
    ([A, A], [1], None, False),
    ([U, A, U], [1], None, True),
    ([S, U, A, U, A], [2, 4], None, False),
    ([A, S, U, A, U, A], [3, 5], None, False),
]


@pytest.mark.parametrize(("roles", "answering", "reason", "open_tail"), CASES)
def test_the_rule(roles, answering, reason, open_tail):
    turns = [Turn(role, f"t{k}") for k, role in enumerate(roles)]
    assert answering_turns(turns) == answering
    assert loss_turns(turns, "all") == answering
    assert loss_turns(turns, "last") == answering[-1:]
    assert unscorable_reason(turns) == reason
    assert ends_on_prompt(turns) == open_tail


def test_the_prompt_of_an_answer_is_the_last_prompt_turn_before_it():
    turns = [Turn(A, "hello"), Turn(S, "s"), Turn(U, "q1"), Turn(A, "a1"), Turn(A, "a2")]
    assert prompt_of(turns, 3) == "q1"
    assert prompt_of(turns, 4) == "q1"
    assert prompt_of([Turn(S, "be brief"), Turn(A, "ok")], 1) == "be brief"
    assert prompt_of([Turn(A, "a"), Turn(A, "b")], 1) == "a"


def test_a_system_then_assistant_record_is_scored_and_can_be_corrupted(gpt2_proxy):
    """The copy that drifted: such a record carried loss but the noise benchmark skipped it."""
    from gradfilter.bench.noise import corrupt
    from gradfilter.scoring.proxy import load_tokenizer
    from gradfilter.scoring.tokenization import encode

    turns = [Turn(S, "Answer in French."), Turn(A, "Bonjour tout le monde")]
    tokenizer = load_tokenizer(gpt2_proxy)
    assert encode(turns, tokenizer, "plain", 64).n_response_tokens > 0
    mixed, labels = corrupt([turns] * 4, 0.5, ["echo"], seed=0, tokenizer=tokenizer)
    assert labels.count("echo") == 2
    assert [t.text for t in mixed[labels.index("echo")]] == ["Answer in French."] * 2


def test_exchanges_cut_conversations_into_single_turn_records(tmp_path):

    records = [
        {"id": "a", "conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi there?"},
            {"from": "gpt", "value": "Hello, how can I help?"},
            {"from": "human", "value": "x" * 50}, {"from": "gpt", "value": "Too long a prompt."},
            {"from": "human", "value": "Again?"}, {"from": "human", "value": "Twice?"},
            {"from": "gpt", "value": "Only the last prompt counts."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Hi there?"},
                                      {"from": "gpt", "value": "Hello, how can I help?"}]},
        {"id": "c", "conversations": "not a list"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    found = list(exchanges(path, max_prompt_chars=40, min_answer_chars=5))
    assert [(e.prompt, e.answer, e.origin) for e in found] == [
        ("Hi there?", "Hello, how can I help?", "a#2"),
        ("Twice?", "Only the last prompt counts.", "a#7")]  # b repeats a#2; c is unreadable
    assert found[0].as_alpaca() == {"instruction": "Hi there?", "input": "",
                                    "output": "Hello, how can I help?", "source": "a#2"}
    # Openings only: a conversation's first user turn and its answer, however long the rest;
    # "Twice?" follows an earlier user turn, so it is not an opening.
    openings = list(exchanges(path, max_prompt_chars=40, min_answer_chars=5, openings_only=True))
    assert [e.origin for e in openings] == ["a#2"]
    records[1]["conversations"][0]["value"] = "x" * 50  # b's opening prompt now too long
    records[1]["conversations"] += [{"from": "human", "value": "Short?"},
                                    {"from": "gpt", "value": "Not an opening."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [e.origin for e in exchanges(path, max_prompt_chars=40, min_answer_chars=5,
                                        openings_only=True)] == ["a#2"]


def _chat(record_id: str, prompt: str) -> dict:
    return {"id": record_id, "conversations": [{"from": "human", "value": prompt},
                                               {"from": "gpt", "value": f"An answer to {prompt}"}]}


def test_openings_pass_over_the_later_chunks_of_a_split_conversation(tmp_path):
    """ShareGPT V3 splits long chats into `<id>_0`, `<id>_1`, ...: a later chunk starts in the
    middle of its conversation ("Thanks", "Rewrite the above"), so it opens nothing; the count
    is reported, with the reader's warning of a file cut off mid-record."""
    records = [_chat("x_0", "Opening one?"), _chat("x_1", "Thanks, and now?"),
               _chat("y_0", "Opening two?"), _chat("x_2", "Rewrite the above"),
               _chat("z_3", "Orphan chunk"), _chat("plain", "Plain id?"),
               _chat("item_7", "Unchunked id?")]
    path = tmp_path / "chunks.json"
    text = json.dumps(records)
    path.write_text(text[: text.rindex("{")] + '{"id": "cut')  # cut off inside the last record
    report = ExchangeReport()
    openings = list(exchanges(path, min_answer_chars=5, openings_only=True, report=report))
    # z_3's first chunk is missing, but the file has shown itself chunked (x_0, x_1).
    assert [e.origin for e in openings] == ["x_0#1", "y_0#1", "plain#1"]
    assert report.continuation_chunks == 3
    assert any("cut off after 6 complete records" in line for line in report.lines())
    assert any("3 continuation chunk(s)" in line for line in report.lines())
    # Every exchange (not only openings) keeps the chunks: they hold real exchanges.
    assert len(list(exchanges(path, min_answer_chars=5))) == 6


def test_ids_with_a_number_suffix_are_openings_where_no_base_repeats(tmp_path):
    path = tmp_path / "numbered.jsonl"
    path.write_text("".join(json.dumps(_chat(f"item_{k}", f"Question {k}?")) + "\n"
                            for k in range(1, 4)))
    report = ExchangeReport()
    assert len(list(exchanges(path, min_answer_chars=5, openings_only=True, report=report))) == 3
    assert report.continuation_chunks == 0
