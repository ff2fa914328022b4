"""A registry of tiny random models (Llama, Qwen2, Qwen3) sharing one small byte-level BPE tokenizer.

Weights use a large init range so that logits are well separated: greedy decoding has no near-ties that
float rounding could flip between torch and ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

PAD, BOS, EOS, MASK = 0, 1, 2, 3
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
VOCAB = 320
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def square(x):\n    return x * x\n",
    "PARD drafts k tokens in one forward pass; the target verifies them all at once.",
    "Speculative decoding keeps the output of the target model exactly, token for token.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12, and some punctuation: ; : ! ? ( ) [ ] { }",
]
PROMPTS = ["The quick brown fox", "def square(x):", "Speculative decoding keeps"]
NEW_TOKENS = 48  # greedy continuations compared token for token

ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
TARGET_SIZE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
DRAFT_SIZE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16
)


def make_tokenizer(vocab: int = VOCAB, corpus=CORPUS) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=SPECIALS[EOS],
        bos_token=SPECIALS[BOS],
        pad_token=SPECIALS[PAD],
        chat_template=CHAT_TEMPLATE,
    )


def make_word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with `vocab` ids ("w4" ... ) for tests that need a small vocabulary."""
    words = {token: i for i, token in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token=SPECIALS[PAD]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=SPECIALS[EOS],
        bos_token=SPECIALS[BOS],
        pad_token=SPECIALS[PAD],
        chat_template=CHAT_TEMPLATE,
    )


def make_model(
    directory: Path,
    arch: str,
    size: dict,
    *,
    seed: int,
    tokenizer=None,
    mask_id: int | None = MASK,
    vocab_rows: int = VOCAB,
    tie: bool = False,
) -> Path:
    """Save a random model (and the tokenizer) as a Hugging Face directory; returns it."""
    config_cls, model_cls = ARCHITECTURES[arch]
    config = config_cls(
        vocab_size=vocab_rows,
        max_position_embeddings=512,
        initializer_range=0.2,
        tie_word_embeddings=tie,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        **size,
    )
    if mask_id is not None:
        config.pard_token = mask_id
        config.spd_type = "pard"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    (tokenizer or make_tokenizer()).save_pretrained(directory)
    return directory


def make_pair(root: Path, arch: str, *, seed: int = 0) -> tuple[Path, Path]:
    """A target and a smaller random draft of the same family, same tokenizer."""
    tokenizer = make_tokenizer()
    target = make_model(root / f"{arch}-target", arch, TARGET_SIZE, seed=seed, tokenizer=tokenizer, mask_id=None)
    draft = make_model(
        root / f"{arch}-draft", arch, DRAFT_SIZE, seed=seed + 1, tokenizer=tokenizer, tie=arch == "qwen3"
    )
    return target, draft


def reference_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The target's own greedy decoding, by transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(prompt_ids) :].tolist()


def cpu_like_calibration(k: int, acceptance: float = 0.5):
    """Costs shaped like SmolLM2's on a CPU (a draft forward 0.15 decode steps, each verified draft 0.05 more), so
    adaptive pard judges the tiny models, whose draft costs as much as their target, as it would a real pair."""
    from pard_export.runtime.calibration import Calibration
    from pard_export.runtime.drafting import StepCosts

    seconds = tuple(1.0 if n == 0 else 1.15 + 0.05 * n for n in range(k + 1))
    return Calibration(StepCosts((32,), (seconds,)), (acceptance,) * k)
