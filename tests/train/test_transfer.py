"""training/transfer.py: a draft survives pack -> unpack within the int8 bound, in small shards."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from training.transfer import pack, unpack


def test_pack_unpack_round_trip(tmp_path):
    draft = tmp_path / "draft"
    draft.mkdir()
    weights = {
        "model.embed_tokens.weight": torch.randn(300, 64),
        "model.layers.0.mlp.up_proj.weight": torch.randn(96, 64),
        "model.norm.weight": torch.rand(64),
        "d2t": torch.arange(300),
    }
    save_file(weights, str(draft / "model.safetensors"))
    (draft / "config.json").write_text('{"spd_type": "pard"}')
    shards = pack(draft, tmp_path / "packed", max_bytes=16_000, int8_names=("embed_tokens",), tokenizer=False)
    assert len(shards) > 2 and all(p.stat().st_size <= 16_000 + 2048 for p in shards)
    unpack(tmp_path / "packed", tmp_path / "back", None)
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]
    bound = embed.abs().amax(1, keepdim=True) / 254 + 1e-3  # int8 rounding, then float16 storage
    assert ((back["model.embed_tokens.weight"].float() - embed).abs() <= bound).all()
    assert torch.equal(back["model.layers.0.mlp.up_proj.weight"], weights["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(back["d2t"], weights["d2t"])
    assert (tmp_path / "back" / "config.json").read_text() == '{"spd_type": "pard"}'
