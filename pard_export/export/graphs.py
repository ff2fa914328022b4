"""Export the target and draft graphs of design §4: trace each block once, stitch, write the weights."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim

from ..contract import (
    ATTENTION_MASK,
    DRAFT_IDS,
    DRAFT_LOGITS,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    TARGET,
    GraphSpec,
    TensorSpec,
    draft_spec,
    past_name,
    present_name,
    target_spec,
)
from ..errors import CompatibilityError
from .arch import ArchSpec
from .blocks import DecoderLayer, DraftHead, Prologue, TargetHead
from .onnx_file import ONNX_DTYPES, save_with_weights
from .pard_draft import draft_to_target
from .stitch import Placement, stitch

_EXAMPLE_BATCH, _EXAMPLE_NEW, _EXAMPLE_PAST = 2, 5, 7  # distinct and >= 2, so nothing specialises


@dataclass(frozen=True)
class _Flavour:
    """What makes a graph a target or a draft graph."""

    spec: GraphSpec
    mask_slots: int
    mask_id: int
    head: nn.Module
    head_outputs: tuple[str, ...]


def export_target(model, arch: ArchSpec, path: Path, role: str = TARGET) -> GraphSpec:
    """The plain AR graph (prefill / decode / verify); also the draft's AR graph with role=DRAFT_AR."""
    spec = target_spec(arch.layers, arch.kv_heads, arch.head_dim, arch.vocab_rows, role)
    return _export(model, arch, path, _Flavour(spec, 0, 0, TargetHead(arch.rms_eps, arch.vocab_rows), (LOGITS,)))


def export_draft(model, arch: ArchSpec, path: Path, *, k: int, vocab: int, mask_id: int) -> GraphSpec:
    head_rows = draft_to_target(model)
    if head_rows is not None and not (0 <= int(head_rows.min()) and int(head_rows.max()) < vocab):
        raise CompatibilityError(f"the draft's head maps to ids outside the tokenizer's 0..{vocab - 1}; retrain it for this tokenizer")
    spec = draft_spec(arch.layers, arch.kv_heads, arch.head_dim, vocab, k)
    head = DraftHead(arch.rms_eps, k, vocab)
    return _export(model, arch, path, _Flavour(spec, k - 1, mask_id, head, (DRAFT_IDS, DRAFT_LOGITS)))


def _export(model, arch: ArchSpec, path: Path, flavour: _Flavour) -> GraphSpec:
    weights, names = hf_weights(model), weight_names(model)
    head_rows = draft_to_target(model)  # a trimmed draft head: the target id of each row
    if head_rows is not None:
        weights[HEAD_ROWS] = head_rows
    layer_params = _layer_param_names(model)
    prologue, layer, head = _trace_blocks(model, arch, flavour, weights, names, layer_params)
    prologue_wiring = {INPUT_IDS: INPUT_IDS, POSITION_IDS: POSITION_IDS, ATTENTION_MASK: ATTENTION_MASK}
    prologue_wiring |= {"embed": names.embed, "hidden": "hidden_states.0"} | _SHARED_BY_LAYERS
    head_wiring = {"hidden": f"hidden_states.{arch.layers}", "norm": names.norm, "lm": names.lm_head}
    if head_rows is not None:
        head_wiring["rows"] = HEAD_ROWS
    placements = [
        Placement(prologue, "prologue", _interface(prologue_wiring)),
        *(Placement(layer, f"layers.{j}", _interface(_layer_wiring(j, layer_params))) for j in range(arch.layers)),
        Placement(head, "head", _interface(head_wiring | {n: n for n in flavour.head_outputs})),
    ]
    dtype = ONNX_DTYPES[model.dtype]
    spec = flavour.spec
    graph = stitch(placements, _value_infos(spec.inputs, dtype), _value_infos(spec.outputs, dtype), spec.role)
    save_with_weights(graph, path, weights)
    onnx.checker.check_model(str(path))
    return spec


def _trace_blocks(model, arch: ArchSpec, flavour: _Flavour, weights, names: WeightNames, layer_params: tuple[str, ...]):
    """The three traced blocks: prologue, one decoder layer (weights as inputs), head."""
    examples = _Examples(arch, model.dtype, new=_EXAMPLE_NEW + flavour.mask_slots)
    rotary = model.model.rotary_emb
    prologue = _trace(
        Prologue(rotary.inv_freq, float(rotary.attention_scaling), model.dtype, flavour.mask_slots, flavour.mask_id),
        examples.prologue(weights[names.embed]),
        [INPUT_IDS, POSITION_IDS, ATTENTION_MASK, "embed"],
        ["hidden", "bias", "cos", "sin"],
        examples.prologue_dims(),
    )
    layer = _trace(
        DecoderLayer(arch, layer_params, drop_tail=flavour.mask_slots),
        examples.layer(tuple(weights[f"model.layers.0.{n}"] for n in layer_params)),
        ["hidden", "bias", "cos", "sin", "past_key", "past_value", *layer_params],
        ["hidden_out", "present_key", "present_value"],
        examples.layer_dims(len(layer_params)),
    )
    rows = (weights[HEAD_ROWS],) if HEAD_ROWS in weights else ()
    head = _trace(
        flavour.head,
        (examples.hidden(), weights[names.norm], weights[names.lm_head], *rows),
        ["hidden", "norm", "lm", *(["rows"] if rows else [])],
        list(flavour.head_outputs),
        ({0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, None, None, *([(None,)] if rows else [])),  # *rows arrives as one tuple
    )
    return prologue, layer, head


def _layer_param_names(model) -> tuple[str, ...]:
    """The parameter names of one decoder layer; every layer must have the same (one traced layer serves all)."""
    per_layer = [tuple(name for name, _ in layer.named_parameters()) for layer in model.model.layers]
    if any(names != per_layer[0] for names in per_layer):
        raise CompatibilityError("the model's decoder layers differ in structure; this exporter needs identical layers")
    return per_layer[0]


@dataclass(frozen=True)
class WeightNames:
    embed: str
    norm: str
    lm_head: str  # the embedding's name when the two are tied


def weight_names(model) -> WeightNames:
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    embed = "model.embed_tokens.weight"
    return WeightNames(embed, "model.norm.weight", embed if tied else "lm_head.weight")


def hf_weights(model) -> dict[str, torch.Tensor]:
    """Every parameter once (tied weights under their first name), as stored by transformers."""
    return {name: param.detach() for name, param in model.named_parameters()}


HEAD_ROWS = "draft_to_target"  # int64 [head rows]: a trimmed draft head's target ids
_SHARED_BY_LAYERS = {"bias": "attention_bias", "cos": "rope_cos", "sin": "rope_sin"}


def _interface(wiring: dict[str, str]) -> dict[str, str]:
    return {f"io.{name}": value for name, value in wiring.items()}


def _layer_wiring(j: int, param_names: tuple[str, ...]) -> dict[str, str]:
    return {
        "hidden": f"hidden_states.{j}",
        **_SHARED_BY_LAYERS,
        "past_key": past_name(j, "key"),
        "past_value": past_name(j, "value"),
        "hidden_out": f"hidden_states.{j + 1}",
        "present_key": present_name(j, "key"),
        "present_value": present_name(j, "value"),
        **{name: f"model.layers.{j}.{name}" for name in param_names},
    }


class _Examples:
    """Example inputs for tracing; only their ranks and static sizes matter."""

    def __init__(self, arch: ArchSpec, dtype: torch.dtype, new: int):
        self.arch, self.dtype = arch, dtype
        self.b, self.s, self.p = _EXAMPLE_BATCH, new, _EXAMPLE_PAST

    def hidden(self):
        return torch.zeros(self.b, self.s, self.arch.hidden_size, dtype=self.dtype)

    def prologue(self, embed):
        b, s, p = self.b, self.s, self.p
        ids = torch.zeros(b, s, dtype=torch.int64)
        positions = torch.arange(p, p + s).expand(b, s).contiguous()
        return ids, positions, torch.ones(b, p + s, dtype=torch.int64), embed

    def layer(self, weights):
        a, b, s, p = self.arch, self.b, self.s, self.p
        rope = torch.zeros(b, 1, s, a.head_dim, dtype=self.dtype)
        past = torch.zeros(b, a.kv_heads, p, a.head_dim, dtype=self.dtype)
        bias = torch.zeros(b, 1, s, p + s, dtype=self.dtype)
        return (self.hidden(), bias, rope, rope.clone(), past, past.clone(), *weights)

    @staticmethod
    def prologue_dims():
        return ({0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, None)

    @staticmethod
    def layer_dims(n_weights: int):
        seq = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC}
        return (
            {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
            {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},
            seq,
            seq,
            seq,
            seq,
            (None,) * n_weights,  # *weights arrives as one tuple
        )


def _trace(module: nn.Module, args, input_names, output_names, dynamic_shapes) -> onnx.ModelProto:
    """Export one block; its interface is named "io.<name>", which no traced value name can shadow."""
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            tuple(args),
            dynamo=True,
            input_names=[f"io.{name}" for name in input_names],
            output_names=[f"io.{name}" for name in output_names],
            dynamic_shapes=tuple(dynamic_shapes),
            verbose=False,
        )
    return program.model_proto


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress and warns about torchvision; neither concerns our users."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _value_infos(tensors: tuple[TensorSpec, ...], model_dtype: int) -> list[onnx.ValueInfoProto]:
    elem = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT, "model": model_dtype}
    return [onnx.helper.make_tensor_value_info(t.name, elem[t.dtype], list(t.dims)) for t in tensors]
