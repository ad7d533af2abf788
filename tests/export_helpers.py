"""Shared helpers (no tests) for the export and import tests: a byte-level BPE tokenizer
with chat special tokens, saved model dirs of the three architectures (with a card and a
chat template), texts that stress the tokenizer, and conversations."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from lumenlm.data.chat_template import TURNS, ChatTemplate
from lumenlm.model import GPT
from lumenlm.modelio import save_model
from lumenlm.presets import get_preset

VOCAB = 400
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TEXTS = [
    "Once upon a time, there was a little girl.",
    "  leading spaces,\ttabs\tand\n\nnewlines  \n",
    "naïve café — 日本語のテキスト 🙂 emoji and ünïcödé",
    "numbers 12345 and 3.14159, punctuation!?;: 'quotes' \"double\" it's we'll",
    "trailing spaces   ",
    "",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "  I am a small model.  \n"},
        {"role": "user", "content": "Tell me a story about 🙂 and {{ braces }} {% tags %}."},
    ],
    [
        {"role": "user", "content": "line one\nline two\twith tab"},
        {"role": "assistant", "content": "it's 'quoted' \\ backslash"},
    ],
]
ARCHS = {
    # architecture -> (preset, ModelConfig changes)
    "gpt2": ("tiny-gpt2", {}),
    "llama": ("tiny", {}),
    "lumiere": ("lumiere-1m", {"context_length": 64, "n_layers": 2}),
}


def make_chat_tokenizer(path: Path, vocab_size: int = VOCAB, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer.json like lumenlm's, with the chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(seed)
    words = " ".join(TEXTS).split() + "the a cat dog sat on mat ran to house".split()
    text = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tok.to_str(pretty=False))
    return path


def perturb(model: GPT, scale: float = 0.1) -> GPT:
    """Random norm gains and biases, so a test also checks their mapping."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * scale)
    return model.eval()


def arch_model_dir(
    root: Path,
    arch: str,
    template: ChatTemplate | None = TURNS,
    card: str | None = "# A test card\n\nTrained for a test.\n",
    **changes: object,
) -> Path:
    """A saved model dir of `arch` (see ARCHS) with the chat tokenizer, a template, a card."""
    preset, base = ARCHS[arch]
    tok = make_chat_tokenizer(root / "tok" / "tokenizer.json")
    cfg = get_preset(preset).model.with_dropout(0.0).replace(vocab_size=VOCAB, **base, **changes)
    torch.manual_seed(0)
    extra = {"chat": template.to_dict()} if template is not None else None
    d = save_model(perturb(GPT(cfg)), root / arch, tokenizer_path=tok, extra=extra)
    if card is not None:
        (d / "README.md").write_text(card)
    return d
