"""Templates and loss masks: the plain template of method.md and chat templates without tags."""

from __future__ import annotations

from gradfilter.data.conversations import Turn
from gradfilter.scoring.proxy import load_tokenizer
from gradfilter.scoring.tokenization import encode, resolve_template


def _response_text(tokenizer, item) -> str:
    return tokenizer.decode(item.input_ids[item.response_mask])


def test_plain_template_is_exactly_the_documented_one(gpt2_proxy):
    tokenizer = load_tokenizer(gpt2_proxy)
    turns = [Turn("user", "Give tips\ncafé"), Turn("assistant", "Sleep well.")]
    item = encode(turns, tokenizer, "plain", 512)
    ids = tokenizer("Give tips\ncafé\n", add_special_tokens=False)["input_ids"]
    response = tokenizer("Sleep well.", add_special_tokens=False)["input_ids"]
    assert item.input_ids.tolist() == [*ids, *response, tokenizer.eos_token_id]
    assert item.response_mask.tolist() == [False] * len(ids) + [True] * (len(response) + 1)
    assert _response_text(tokenizer, item) == "Sleep well.<|endoftext|>"


def test_plain_multi_turn_every_assistant_turn_counts_or_only_the_last(gpt2_proxy):
    tokenizer = load_tokenizer(gpt2_proxy)
    turns = [Turn("system", "Be brief."), Turn("user", "2+2?"), Turn("assistant", "4"),
             Turn("user", "times 10?"), Turn("assistant", "40")]
    every = encode(turns, tokenizer, "plain", 512)
    last = encode(turns, tokenizer, "plain", 512, "last")
    assert _response_text(tokenizer, every) == "4<|endoftext|>40<|endoftext|>"
    assert _response_text(tokenizer, last) == "40<|endoftext|>"
    assert tokenizer.decode(every.input_ids) == (
        "Be brief.\n2+2?\n4<|endoftext|>times 10?\n40<|endoftext|>")


def test_chat_template_masks_assistant_content_and_end_marker(llama_proxy):
    tokenizer = load_tokenizer(llama_proxy)
    assert resolve_template(tokenizer, "auto") == "chat"
    turns = [Turn("user", "2+2?"), Turn("assistant", "4 café"), Turn("user", "times 10?"),
             Turn("assistant", "40")]
    item = encode(turns, tokenizer, "chat", 512)
    assert tokenizer.decode(item.input_ids) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4 café<|im_end|>\n"
        "<|im_start|>user\ntimes 10?<|im_end|>\n<|im_start|>assistant\n40<|im_end|>\n")
    assert _response_text(tokenizer, item) == "4 café<|im_end|>\n40<|im_end|>\n"


def test_truncation_cuts_the_end_of_the_response(gpt2_proxy):
    tokenizer = load_tokenizer(gpt2_proxy)
    turns = [Turn("user", "Tips"), Turn("assistant", "Eat well and sleep. " * 20)]
    full = encode(turns, tokenizer, "plain", 512)
    cut = encode(turns, tokenizer, "plain", 12)
    assert cut.truncated and not full.truncated
    assert cut.input_ids.tolist() == full.input_ids[:12].tolist()
    assert 0 < cut.n_response_tokens < full.n_response_tokens


def test_opening_assistant_turn_is_context(gpt2_proxy):
    tokenizer = load_tokenizer(gpt2_proxy)
    turns = [Turn("assistant", "Hello!"), Turn("user", "Hi"), Turn("assistant", "Yes")]
    item = encode(turns, tokenizer, "plain", 512)
    assert _response_text(tokenizer, item) == "Yes<|endoftext|>"
