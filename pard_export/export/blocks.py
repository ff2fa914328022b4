"""The graph pieces, as torch modules whose weights are inputs: one decoder layer is traced once and
stitched L times (stitch.py), so export time and memory do not grow with depth.

The math mirrors transformers' eager Llama / Qwen2 / Qwen3 (RMSNorm and softmax in float32).
Shapes: B batch, S new tokens, T = P + S, Hd hidden size, Hq / Hkv heads, D head size, V vocabulary rows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .arch import ArchSpec


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """x @ W^T (+ b) on a 2-D view, which exports as Gemm(transB=1) over the weight as stored."""
    lead = x.shape[:-1]
    y = F.linear(x.reshape(-1, x.shape[-1]), w[f"{name}.weight"], w.get(f"{name}.bias"))
    return y.reshape(*lead, y.shape[-1])


class Prologue(nn.Module):
    """Token embedding, rotary tables and the additive attention bias; the draft appends its mask slots here."""

    def __init__(
        self, inv_freq: torch.Tensor, rope_scale: float, dtype: torch.dtype, mask_slots: int = 0, mask_id: int = 0
    ):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float().clone(), persistent=False)  # [D/2]
        self.rope_scale, self.dtype, self.mask_slots, self.mask_id = rope_scale, dtype, mask_slots, mask_id

    def forward(self, input_ids, position_ids, attention_mask, embed):
        if self.mask_slots:
            input_ids, position_ids = self._append_mask_slots(input_ids, position_ids)
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones(input_ids.shape[0], self.mask_slots)], 1
            )
        B, S = input_ids.shape
        T = attention_mask.shape[1]
        hidden, cos, sin = self._embed_and_rotary(input_ids, position_ids, embed)
        # Query i sits at cache position T - S + i (bottom-right aligned) and sees real tokens up to it. A padding
        # query also sees itself, so no row is fully masked (such rows turn to NaN in float16 and would poison
        # the cache through that slot's K/V).
        key_pos = torch.arange(T, device=input_ids.device)
        query_pos = torch.arange(S, device=input_ids.device) + (T - S)
        causal = key_pos[None, :] <= query_pos[:, None]  # [S, T]
        itself = key_pos[None, :] == query_pos[:, None]
        visible = causal[None] & (attention_mask.bool()[:, None, :] | itself[None])  # [B, S, T]
        bias = torch.where(visible, 0.0, torch.finfo(self.dtype).min).to(self.dtype)[:, None]  # [B, 1, S, T]
        return hidden, bias, cos, sin

    def _embed_and_rotary(self, input_ids, position_ids, embed):
        cos, sin = (torch.cat((t, t), dim=-1)[:, None] for t in self._half_rotary(position_ids))  # [B, 1, S, D]
        return F.embedding(input_ids, embed), cos, sin

    def _half_rotary(self, position_ids):
        """cos and sin [B, S, D/2] of each position, scaled, in the model's dtype."""
        freqs = position_ids[..., None].float() * self.inv_freq
        return (freqs.cos() * self.rope_scale).to(self.dtype), (freqs.sin() * self.rope_scale).to(self.dtype)

    def _append_mask_slots(self, input_ids, position_ids):
        B = input_ids.shape[0]
        steps = torch.arange(1, self.mask_slots + 1, device=input_ids.device)
        masks = torch.full((B, self.mask_slots), self.mask_id, dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, masks], 1), torch.cat([position_ids, position_ids[:, -1:] + steps], 1)


class PluginPrologue(Prologue):
    """The plugin flavour's prologue: no attention bias (each PardAttention node masks by past_len)."""

    def forward(self, input_ids, position_ids, embed):
        if self.mask_slots:
            input_ids, position_ids = self._append_mask_slots(input_ids, position_ids)
        return self._embed_and_rotary(input_ids, position_ids, embed)


class HalfRotaryPrologue(PluginPrologue):
    """The inplace flavour's prologue: cos and sin [B, S, D/2], the tables RotaryEmbedding takes (fused_layer.py)."""

    def _embed_and_rotary(self, input_ids, position_ids, embed):
        return F.embedding(input_ids, embed), *self._half_rotary(position_ids)


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer over a concatenated KV cache; present drops the last `drop_tail` slots."""

    def __init__(self, arch: ArchSpec, weight_names: tuple[str, ...], drop_tail: int = 0):
        super().__init__()
        self.arch, self.weight_names, self.drop_tail = arch, weight_names, drop_tail

    def forward(self, hidden, bias, cos, sin, past_key, past_value, *weights):
        w = dict(zip(self.weight_names, weights))
        q, k, v = attention_inputs(self.arch, hidden, cos, sin, w)  # [B, H, S, D]
        key = torch.cat([past_key, k], 2)  # [B, Hkv, T, D]
        value = torch.cat([past_value, v], 2)
        out = self._attend(q, key, value, bias)  # [B, S, Hq*D]
        hidden = attention_outputs(self.arch, hidden, out, w)
        if self.drop_tail:
            key, value = key[:, :, : key.shape[2] - self.drop_tail], value[:, :, : value.shape[2] - self.drop_tail]
        return hidden, key, value

    def _attend(self, q, key, value, bias):
        a = self.arch
        B, _, S, D = q.shape
        T = key.shape[2]
        groups = a.q_heads // a.kv_heads
        # Grouped-query attention without repeating K/V: the query heads of one KV head share a matmul.
        scores = q.reshape(B, a.kv_heads, groups * S, D) @ key.transpose(-1, -2) * D**-0.5  # [B, Hkv, G*S, T]
        scores = scores.view(B, a.kv_heads, groups, S, T) + bias[:, :, None]
        probs = scores.float().softmax(-1).to(value.dtype).view(B, a.kv_heads, groups * S, T)
        out = (probs @ value).view(B, a.q_heads, S, D)
        return out.transpose(1, 2).reshape(B, S, a.q_heads * D)


def attention_inputs(a: ArchSpec, hidden, cos, sin, w: dict[str, torch.Tensor]):
    """The layer up to attention: q [B, Hq, S, D], k and v [B, Hkv, S, D], rotary applied to q and k."""
    B, S, _ = hidden.shape
    x = rms_norm(hidden, w["input_layernorm.weight"], a.rms_eps)
    q = linear(x, w, "self_attn.q_proj").view(B, S, a.q_heads, a.head_dim)
    k = linear(x, w, "self_attn.k_proj").view(B, S, a.kv_heads, a.head_dim)
    v = linear(x, w, "self_attn.v_proj").view(B, S, a.kv_heads, a.head_dim).transpose(1, 2)
    if a.qk_norm:
        q = rms_norm(q, w["self_attn.q_norm.weight"], a.rms_eps)
        k = rms_norm(k, w["self_attn.k_norm.weight"], a.rms_eps)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, S, D]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


def attention_outputs(a: ArchSpec, hidden, attended, w: dict[str, torch.Tensor]):
    """The layer after attention (attended [B, S, Hq*D]): output projection, residuals, MLP."""
    hidden = hidden + linear(attended, w, "self_attn.o_proj")
    x = rms_norm(hidden, w["post_attention_layernorm.weight"], a.rms_eps)
    return hidden + linear(F.silu(linear(x, w, "mlp.gate_proj")) * linear(x, w, "mlp.up_proj"), w, "mlp.down_proj")


_AFTER_ATTENTION = ("self_attn.o_proj.", "post_attention_layernorm.", "mlp.")


def split_layer_weights(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A layer's parameter names -> (those used before attention, those used after it)."""
    after = tuple(n for n in names if n.startswith(_AFTER_ATTENTION))
    return tuple(n for n in names if n not in after), after


class PluginAttentionInputs(nn.Module):
    """Plugin flavour, one layer up to its PardAttention node: q [B, S, Hq, D], k and v [B, S, Hkv, D]."""

    def __init__(self, arch: ArchSpec, weight_names: tuple[str, ...]):
        super().__init__()
        self.arch, self.weight_names = arch, weight_names

    def forward(self, hidden, cos, sin, *weights):
        q, k, v = attention_inputs(self.arch, hidden, cos, sin, dict(zip(self.weight_names, weights)))
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class PluginAttentionOutputs(nn.Module):
    """Plugin flavour, one layer after its PardAttention node (attended [B, S, Hq, D])."""

    def __init__(self, arch: ArchSpec, weight_names: tuple[str, ...]):
        super().__init__()
        self.arch, self.weight_names = arch, weight_names

    def forward(self, hidden, attended, *weights):
        B, S = attended.shape[:2]
        return attention_outputs(self.arch, hidden, attended.reshape(B, S, -1), dict(zip(self.weight_names, weights)))


class TargetHead(nn.Module):
    """Final norm and LM head at every position: logits [B, S, V] in float32.

    With `rows` (a trimmed draft head: the target id of each head row) the logits are scattered into the whole
    vocabulary of size `vocab`; ids outside the head get -inf, so they are never drafted and have probability 0."""

    def __init__(self, eps: float, vocab: int = 0):
        super().__init__()
        self.eps, self.vocab = eps, vocab

    def forward(self, hidden, norm_weight, lm_weight, *rows):
        logits = linear(rms_norm(hidden, norm_weight, self.eps), {"lm.weight": lm_weight}, "lm").float()
        return widen(logits, rows[0], self.vocab) if rows else logits


class DraftHead(nn.Module):
    """Logits of the last K positions over the shared vocabulary, and their argmax (as target ids)."""

    def __init__(self, eps: float, k: int, vocab: int):
        super().__init__()
        self.eps, self.k, self.vocab = eps, k, vocab

    def forward(self, hidden, norm_weight, lm_weight, *rows):
        x = rms_norm(hidden[:, -self.k :], norm_weight, self.eps)
        logits = linear(x, {"lm.weight": lm_weight}, "lm").float()  # [B, K, head rows]
        if rows:
            return rows[0][logits.argmax(-1)], widen(logits, rows[0], self.vocab)
        logits = logits[..., : self.vocab]
        return logits.argmax(-1), logits


def widen(logits: torch.Tensor, rows: torch.Tensor, vocab: int) -> torch.Tensor:
    """[..., R] logits of head rows -> [..., vocab], -inf where no row maps."""
    full = logits.new_full((*logits.shape[:-1], vocab), float("-inf"))
    return full.scatter(-1, rows.expand(*logits.shape[:-1], rows.shape[0]), logits)
