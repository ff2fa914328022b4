"""A PARD draft as a Hugging Face directory: a few decoder layers of the target, its full input embedding, and
an LM head over a trimmed vocabulary (the most frequent ids) with an EAGLE-3 style map `d2t`:
target_id = draft_id + d2t[draft_id]. The input side keeps every target id and the mask id, so the draft reads
any text; it can only propose ids of its head, and the target rejects nothing it would not reject anyway.

config.json carries `pard_token` (the mask id), `spd_type: "pard"` and `draft_vocab_size`.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

WEIGHTS_FILE = "model.safetensors"
D2T = "d2t"


def most_frequent_ids(sequences, size: int, vocab: int, always: tuple[int, ...] = ()) -> torch.Tensor:
    """`size` ids of 0..vocab-1: `always`, then the most frequent in the sequences (ties by id), then the lowest
    unseen ids if the sequences hold fewer; sorted."""
    counts = Counter(token for seq in sequences for token in seq)
    ranked = [token for token, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    chosen = dict.fromkeys(always)
    for token in [*ranked, *range(vocab)]:
        if len(chosen) >= size:
            break
        chosen.setdefault(token)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def shrink(model, layers: list[int], vocab_ids: torch.Tensor, mask_id: int):
    """A copy of `model` keeping the given decoder layers and an LM head over vocab_ids (rows of its head)."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers)
    config.tie_word_embeddings = False
    config.pard_token = mask_id
    config.spd_type = "pard"
    config.draft_vocab_size = len(vocab_ids)
    for key in ("layer_types",):  # per-layer lists must follow the new depth
        if getattr(config, key, None) is not None:
            setattr(config, key, [getattr(config, key)[i] for i in layers])
    draft = _empty_draft(config)
    draft.model.embed_tokens.load_state_dict(model.model.embed_tokens.state_dict())
    draft.model.norm.load_state_dict(model.model.norm.state_dict())
    for new, old in enumerate(layers):
        draft.model.layers[new].load_state_dict(model.model.layers[old].state_dict())
    with torch.no_grad():
        draft.lm_head.weight.copy_(model.get_output_embeddings().weight[vocab_ids])
    draft.d2t = vocab_ids - torch.arange(len(vocab_ids))
    return draft


def draft_to_target(model) -> torch.Tensor | None:
    """Target ids of the head's rows, or None when the head covers the whole vocabulary."""
    d2t = getattr(model, D2T, None)
    return None if d2t is None else d2t + torch.arange(len(d2t))


def target_to_draft(model, target_vocab: int) -> torch.Tensor:
    """[target_vocab] draft row of each target id, -1 where the head has none."""
    ids = draft_to_target(model)
    mapping = torch.full((target_vocab,), -1, dtype=torch.long)
    if ids is None:
        mapping[: model.lm_head.out_features] = torch.arange(min(target_vocab, model.lm_head.out_features))
    else:
        mapping[ids] = torch.arange(len(ids))
    return mapping


def save_draft(model, directory: Path, tokenizer=None, dtype: torch.dtype = torch.float16) -> None:
    """config.json + model.safetensors (weights in `dtype`, d2t in int64) + tokenizer files."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to(dtype).contiguous() for name, t in model.state_dict().items()}
    if getattr(model, D2T, None) is not None:
        state[D2T] = model.d2t.to(torch.long).contiguous()
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):  # of the model it was cut from
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = str(dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def is_trimmed_draft(config) -> bool:
    return getattr(config, "draft_vocab_size", None) is not None


def load_draft(location: str | Path, dtype: torch.dtype = torch.float32, revision: str | None = None):
    """A draft saved by save_draft (a directory, or a hub id in the local cache), in `dtype`, with d2t attached."""
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.utils import cached_file

    config = AutoConfig.from_pretrained(location, revision=revision)
    state = load_file(cached_file(str(location), WEIGHTS_FILE, revision=revision))
    d2t = state.pop(D2T, None)
    model = _empty_draft(config)
    model.load_state_dict({name: t.float() for name, t in state.items()}, strict=True)
    model.d2t = d2t
    return model.to(dtype).eval()


def _empty_draft(config):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if is_trimmed_draft(config):
        model.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
    return model
