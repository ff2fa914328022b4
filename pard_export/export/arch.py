"""What the exporter needs to know about a decoder-only model, read once from its Hugging Face config."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompatibilityError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# Rope variants whose frequencies do not depend on the sequence length, so one table serves every shape.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_REQUIRED = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "rms_norm_eps",
)


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    layers: int
    hidden_size: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab_rows: int
    rms_eps: float
    qk_norm: bool  # Qwen3 normalises q and k per head before rope

    @classmethod
    def from_hf_config(cls, config, role: str) -> ArchSpec:
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise CompatibilityError(
                f"the {role} is a {model_type!r} model; supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        missing = [key for key in _REQUIRED if getattr(config, key, None) is None]
        if missing:
            raise CompatibilityError(
                f"the {role}'s config lacks {', '.join(missing)}; it is not a usable {model_type} config"
            )
        _check_attention_layout(config, role)
        heads = config.num_attention_heads
        return cls(
            model_type=model_type,
            layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            q_heads=heads,
            kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_rows=config.vocab_size,
            rms_eps=float(config.rms_norm_eps),
            qk_norm=model_type == "qwen3",
        )


def _check_attention_layout(config, role: str) -> None:
    if getattr(config, "use_sliding_window", False) or "sliding_attention" in (
        getattr(config, "layer_types", None) or ()
    ):
        raise CompatibilityError(f"the {role} uses sliding-window attention, which this exporter does not support")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise CompatibilityError(f"the {role} uses activation {config.hidden_act!r}; only silu (SwiGLU) is supported")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE_TYPES:
        raise CompatibilityError(f"the {role} uses rope type {rope_type!r}; supported: {', '.join(STATIC_ROPE_TYPES)}")
    if config.num_attention_heads % config.num_key_value_heads:
        raise CompatibilityError(
            f"the {role} has {config.num_attention_heads} query heads, not a multiple of its kv heads"
        )
