"""Generate a tiny Llama-shaped model directory that real vLLM (CPU build) can serve.

vLLM's ``--load-format dummy`` fills the weights with random values, so the directory only
needs the configuration and a tokenizer: no download, no hub. The tokenizer is a byte-level
BPE trained in about a second with the ``tokenizers`` library on generated text, so every
UTF-8 input tokenizes (byte fallback) and the vocabulary is small.

    python -m backends.vllm.tiny_model DIR
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

VOCAB_SIZE = 2048
MAX_POSITION_EMBEDDINGS = 4096

# A Llama-3-like chat template, short enough to read: every message is framed by role
# markers, and the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|start|>{{ message['role'] }}\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|start|>", "<|end|>"]

_WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "model",
    "token",
    "cache",
    "memory",
    "request",
    "prompt",
    "context",
    "window",
    "router",
    "pool",
    "backend",
    "latency",
    "stream",
    "batch",
    "prefill",
    "decode",
    "engine",
    "block",
    "queue",
    "shed",
    "breaker",
    "redis",
    "metric",
]


def _corpus(lines: int = 4000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 24))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return out


def build_tokenizer_json(vocab_size: int = VOCAB_SIZE) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return str(tok.to_str())


def write_tiny_model(directory: Path) -> Path:
    """Write config, tokenizer and generation config into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_json = build_tokenizer_json()
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    vocab_size = len(vocab)
    (directory / "tokenizer.json").write_text(tokenizer_json)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": vocab_size,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "bos_token_id": vocab["<|bos|>"],
        "eos_token_id": vocab["<|eos|>"],
        "pad_token_id": vocab["<|pad|>"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    generation_config = {
        "bos_token_id": vocab["<|bos|>"],
        "eos_token_id": vocab["<|eos|>"],
        "do_sample": False,
    }
    (directory / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    return directory


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m backends.vllm.tiny_model DIR")
    print(write_tiny_model(Path(sys.argv[1])))
