"""Tiny proxies built from configs, with a byte-level BPE tokenizer trained on the fly."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Give three tips for staying healthy.",
    "Eat a balanced diet, exercise regularly and sleep well.",
    "Translate the sentence into French: the cat sleeps on the mat.",
    "Le chat dort sur le tapis. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 1000.",
    "def add(a, b):\n    return a + b\n# Python code with symbols: []{}()<>=+-*/%!?",
    "Unicode: café, naïve, 日本語, emoji 🙂, ümlaut ß.",
]


def train_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if chat else ["<|endoftext|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    if chat:
        tokenizer.chat_template = CHATML
    return tokenizer


def make_proxy(directory: Path, arch: str = "gpt2", chat: bool = False, seed: int = 0) -> str:
    """Save a tiny random `arch` model ('gpt2' or 'llama') with its tokenizer; return its path."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    tokenizer = train_tokenizer(chat)
    vocab = len(tokenizer)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=2, n_head=4,
                            eos_token_id=tokenizer.eos_token_id,
                            bos_token_id=tokenizer.eos_token_id)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                             tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
