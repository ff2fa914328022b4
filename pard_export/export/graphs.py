"""Export the target and draft graphs of design §4: trace each block once, stitch, write the weights.

Plain flavour: prologue, L copies of one traced decoder layer, head. Plugin flavour (contract.py): each layer is
two traced halves with a pard::PardAttention node between them (plugins/pard_attention/schema.py). Inplace flavour:
per layer, hand-written blocks of fused ops before and after (fused_layer.py) a block of standard ops that writes
the new KV rows into the buffers and attends over them (inplace_attention.py).
"""

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

from plugins.pard_attention import INPUTS as ATTENTION_INPUTS
from plugins.pard_attention import OUTPUTS as ATTENTION_OUTPUTS
from plugins.pard_attention.schema import make_node, opset_import, register_schema

from ..contract import (
    ATTENTION_MASK,
    DRAFT_IDS,
    DRAFT_LOGITS,
    INPLACE,
    INPUT_IDS,
    LOGITS,
    NATIVE_KERNEL,
    ONNX_KERNEL,
    PAST_LEN,
    PLAIN,
    PLUGIN,
    POSITION_IDS,
    PREFILL,
    TARGET,
    GraphSpec,
    TensorSpec,
    draft_spec,
    kv_cache_name,
    kv_cache_out_name,
    past_name,
    present_name,
    target_spec,
)
from ..errors import CompatibilityError
from . import fused_layer, inplace_attention, native_attention
from .arch import ArchSpec
from .blocks import (
    DecoderLayer,
    DraftHead,
    HalfRotaryPrologue,
    PluginAttentionInputs,
    PluginAttentionOutputs,
    PluginPrologue,
    Prologue,
    TargetHead,
    split_layer_weights,
)
from .lazy_weights import LazyWeights
from .onnx_file import ONNX_DTYPES, save_with_weights
from .pard_draft import draft_to_target
from .stitch import Placement, block_model, stitch

_EXAMPLE_BATCH, _EXAMPLE_NEW, _EXAMPLE_PAST = 2, 5, 7  # distinct and >= 2, so nothing specialises


@dataclass(frozen=True)
class _Flavour:
    """What makes a graph a target or a draft graph."""

    spec: GraphSpec
    mask_slots: int
    mask_id: int
    head: nn.Module
    head_outputs: tuple[str, ...]
    kernel: str = ONNX_KERNEL  # the inplace flavour's attention kernel (contract.py)


def export_target(
    model,
    arch: ArchSpec,
    path: Path,
    role: str = TARGET,
    attention: str = PLAIN,
    *,
    kernel: str = ONNX_KERNEL,
    weights=None,
    progress=None,
) -> GraphSpec:
    """The AR graph (prefill / decode / verify); also the draft's AR graph with role=DRAFT_AR.

    kernel: the inplace flavour's attention kernel (contract.py). weights: name -> tensor, read as they are written
    (checkpoint.CheckpointWeights); None: the model's own. progress(name) is called before each weight is written."""
    spec = target_spec(arch.layers, arch.kv_heads, arch.head_dim, arch.vocab_rows, role, attention)
    flavour = _Flavour(spec, 0, 0, TargetHead(arch.rms_eps, arch.vocab_rows), (LOGITS,), kernel)
    return _export(model, arch, path, flavour, weights, progress)


def export_draft(
    model,
    arch: ArchSpec,
    path: Path,
    *,
    k: int,
    vocab: int,
    mask_id: int,
    attention: str = PLAIN,
    kernel: str = ONNX_KERNEL,
    weights=None,
    progress=None,
) -> GraphSpec:
    """The PARD draft graph: k - 1 mask slots; kernel, weights and progress as export_target's."""
    head_rows = draft_to_target(model)
    if head_rows is not None and not (0 <= int(head_rows.min()) and int(head_rows.max()) < vocab):
        raise CompatibilityError(
            f"the draft's head maps to ids outside the tokenizer's 0..{vocab - 1}; retrain it for this tokenizer"
        )
    spec = draft_spec(arch.layers, arch.kv_heads, arch.head_dim, vocab, k, attention)
    head = DraftHead(arch.rms_eps, k, vocab)
    flavour = _Flavour(spec, k - 1, mask_id, head, (DRAFT_IDS, DRAFT_LOGITS), kernel)
    return _export(model, arch, path, flavour, weights, progress)


def _export(model, arch: ArchSpec, path: Path, flavour: _Flavour, weights, progress) -> GraphSpec:
    weights, names = LazyWeights.over(hf_weights(model) if weights is None else weights), weight_names(model)
    attention = flavour.spec.attention
    if attention == INPLACE:
        weights = fused_layer.fused_weights(weights, arch.layers, fused_layer.has_qkv_bias(_layer_param_names(model)))
    head_rows = draft_to_target(model)  # a trimmed draft head: the target id of each row
    if head_rows is not None:
        weights.add(HEAD_ROWS, lambda: head_rows)
    examples = _Examples(arch, model.dtype, new=_EXAMPLE_NEW + flavour.mask_slots)
    head_wiring = {"hidden": f"hidden_states.{arch.layers}", "norm": names.norm, "lm": names.lm_head}
    if head_rows is not None:
        head_wiring["rows"] = HEAD_ROWS
    placements = [
        Placement(
            _trace_prologue(model, flavour, examples, weights[names.embed]),
            "prologue",
            _interface(_prologue_wiring(names, flavour.spec.buffered)),
        ),
        *_LAYERS[attention](model, arch, flavour, examples, weights),
        Placement(
            _trace_head(flavour, examples, weights, names),
            "head",
            _interface(head_wiring | {n: n for n in flavour.head_outputs}),
        ),
    ]
    dtype = ONNX_DTYPES[model.dtype]
    spec = flavour.spec
    graph = stitch(placements, _value_infos(spec.inputs, dtype), _value_infos(spec.outputs, dtype), spec.role)
    save_with_weights(graph, path, weights, progress)
    if flavour.spec.attention == PLUGIN:
        register_schema()
    onnx.checker.check_model(str(path))
    return spec


def _prologue_wiring(names: WeightNames, buffered: bool) -> dict[str, str]:
    wiring = {INPUT_IDS: INPUT_IDS, POSITION_IDS: POSITION_IDS, "embed": names.embed, "hidden": "hidden_states.0"}
    if buffered:
        return wiring | {"cos": _SHARED_BY_LAYERS["cos"], "sin": _SHARED_BY_LAYERS["sin"]}
    return wiring | {ATTENTION_MASK: ATTENTION_MASK} | _SHARED_BY_LAYERS


def _trace_prologue(model, flavour: _Flavour, examples: _Examples, embed) -> onnx.ModelProto:
    rotary = model.model.rotary_emb
    settings = (rotary.inv_freq, float(rotary.attention_scaling), model.dtype, flavour.mask_slots, flavour.mask_id)
    if flavour.spec.buffered:
        ids, positions, _, embed = examples.prologue(embed)
        dims = examples.prologue_dims()
        prologue = HalfRotaryPrologue if flavour.spec.attention == INPLACE else PluginPrologue
        return _trace(
            prologue(*settings),
            (ids, positions, embed),
            [INPUT_IDS, POSITION_IDS, "embed"],
            ["hidden", "cos", "sin"],
            (dims[0], dims[1], dims[3]),
        )
    return _trace(
        Prologue(*settings),
        examples.prologue(embed),
        [INPUT_IDS, POSITION_IDS, ATTENTION_MASK, "embed"],
        ["hidden", "bias", "cos", "sin"],
        examples.prologue_dims(),
    )


def _plain_layers(model, arch: ArchSpec, flavour: _Flavour, examples: _Examples, weights) -> list[Placement]:
    """One traced decoder layer (weights as inputs) over a concatenated cache, placed L times."""
    layer_params = _layer_param_names(model)
    layer = _trace(
        DecoderLayer(arch, layer_params, drop_tail=flavour.mask_slots),
        examples.layer(tuple(weights[f"model.layers.0.{n}"] for n in layer_params)),
        ["hidden", "bias", "cos", "sin", "past_key", "past_value", *layer_params],
        ["hidden_out", "present_key", "present_value"],
        examples.layer_dims(len(layer_params)),
    )
    return [Placement(layer, f"layers.{j}", _interface(_layer_wiring(j, layer_params))) for j in range(arch.layers)]


def _plugin_layers(model, arch: ArchSpec, flavour: _Flavour, examples: _Examples, weights) -> list[Placement]:
    """Per layer: the traced half before attention, a PardAttention node over the layer's KV buffers, the traced
    half after it."""
    before, after = split_layer_weights(_layer_param_names(model))
    inputs, outputs = _traced_halves(arch, examples, weights, before, after)
    node = _attention_node_block(arch, ONNX_DTYPES[model.dtype])
    placements = []
    for j in range(arch.layers):
        wiring = _plugin_layer_wiring(j, before, after)
        placements += [
            Placement(inputs, f"layers.{j}.before_attention", _interface(wiring[0])),
            Placement(node, f"layers.{j}.attention", _interface(wiring[1])),
            Placement(outputs, f"layers.{j}.after_attention", _interface(wiring[2])),
        ]
    return placements


def _fused_layers(model, arch: ArchSpec, flavour: _Flavour, examples: _Examples, weights) -> list[Placement]:
    """The inplace flavour: the attention mask once, then per layer the hand-written block before attention
    (fused_layer.py), attention over the layer's buffers (inplace_attention.py), the block after it."""
    dtype = ONNX_DTYPES[model.dtype]
    has_bias = fused_layer.has_qkv_bias(_layer_param_names(model))
    if flavour.kernel == NATIVE_KERNEL:
        return _native_layers(arch, dtype, has_bias)
    before, after, attend = {}, {}, inplace_attention.layer_block(arch, dtype)
    placements = [
        Placement(
            inplace_attention.mask_block(arch, dtype),
            "attention_mask",
            _interface(inplace_attention.mask_wiring(kv_cache_name(0, "key"))),
        )
    ]
    for j in range(arch.layers):
        first, last = j == 0, j == arch.layers - 1
        before.setdefault(first, fused_layer.before_attention_block(arch, dtype, has_bias, first))
        after.setdefault(last, fused_layer.after_attention_block(arch, dtype, last))
        into, out = fused_layer.stream_wiring(j, arch.layers)
        attention = _attention_wiring(j)
        stream = f"layers.{j}.stream"  # the residual stream entering the layer, from before to after attention
        before_wiring = into | {"cos": _SHARED_BY_LAYERS["cos"], "sin": _SHARED_BY_LAYERS["sin"], "stream": stream}
        before_wiring |= {n: attention[n] for n in ("q", "k", "v")}
        after_wiring = out | {"stream": stream, "attended": attention["out"]}
        placements += [
            Placement(
                before[first],
                f"layers.{j}.before_attention",
                _interface(before_wiring | _layer_weights(j, fused_layer.before_weights(arch, has_bias))),
            ),
            Placement(attend, f"layers.{j}.attention", _interface(attention | inplace_attention.SHARED)),
            Placement(
                after[last],
                f"layers.{j}.after_attention",
                _interface(after_wiring | _layer_weights(j, fused_layer.AFTER_WEIGHTS)),
            ),
        ]
    return placements


def _native_layers(arch: ArchSpec, dtype: int, has_bias: bool) -> list[Placement]:
    """The inplace flavour with the native kernel: per layer the fused block up to the q/k/v MatMul, one
    CachedAttention node (native_attention.py), the fused block from the Wo MatMul on."""
    attend, before, after, placements = native_attention.layer_block(arch), {}, {}, []
    before_names = fused_layer.before_weights(arch, has_bias, split_heads=False)
    norms = native_attention.NORMS if arch.qk_norm else ()
    for j in range(arch.layers):
        first, last = j == 0, j == arch.layers - 1
        before.setdefault(first, fused_layer.before_attention_block(arch, dtype, has_bias, first, split_heads=False))
        after.setdefault(last, fused_layer.after_attention_block(arch, dtype, last, flat=True))
        into, out = fused_layer.stream_wiring(j, arch.layers)
        attention, stream = _attention_wiring(j), f"layers.{j}.stream"
        qkv = f"layers.{j}.attention.qkv"
        attention_wiring = {n: attention[n] for n in ("k_cache", "v_cache", "k_cache_out", "v_cache_out", "out")}
        attention_wiring |= {"qkv": qkv, "past_len": PAST_LEN, "prefill": PREFILL}
        attention_wiring |= {"cos": _SHARED_BY_LAYERS["cos"], "sin": _SHARED_BY_LAYERS["sin"]}
        placements += [
            Placement(
                before[first],
                f"layers.{j}.before_attention",
                _interface(into | {"qkv": qkv, "stream": stream} | _layer_weights(j, before_names)),
            ),
            Placement(attend, f"layers.{j}.attention", _interface(attention_wiring | _layer_weights(j, norms))),
            Placement(
                after[last],
                f"layers.{j}.after_attention",
                _interface(
                    out
                    | {"stream": stream, "attended": attention["out"]}
                    | _layer_weights(j, fused_layer.AFTER_WEIGHTS)
                ),
            ),
        ]
    return placements


def _traced_halves(arch: ArchSpec, examples: _Examples, weights, before: tuple[str, ...], after: tuple[str, ...]):
    first = {n: weights[f"model.layers.0.{n}"] for n in before + after}  # traced with layer 0's weights
    inputs = _trace(
        PluginAttentionInputs(arch, before),
        examples.attention_inputs([first[n] for n in before]),
        ["hidden", "cos", "sin", *before],
        ["q", "k", "v"],
        examples.attention_inputs_dims(len(before)),
    )
    outputs = _trace(
        PluginAttentionOutputs(arch, after),
        examples.attention_outputs([first[n] for n in after]),
        ["hidden", "attended", *after],
        ["hidden_out"],
        examples.attention_outputs_dims(len(after)),
    )
    return inputs, outputs


def _plugin_layer_wiring(j: int, before: tuple[str, ...], after: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    """Wiring of layer j's three plugin-flavour blocks: before attention, the attention node, after it."""
    attention, hidden, shared = _attention_wiring(j), f"hidden_states.{j}", _SHARED_BY_LAYERS
    before_wiring = {"hidden": hidden, "cos": shared["cos"], "sin": shared["sin"]}
    before_wiring |= {n: attention[n] for n in ("q", "k", "v")}
    after_wiring = {"hidden": hidden, "attended": attention["out"], "hidden_out": f"hidden_states.{j + 1}"}
    return before_wiring | _layer_weights(j, before), attention, after_wiring | _layer_weights(j, after)


def _attention_wiring(j: int) -> dict[str, str]:
    """Layer j's attention over its buffers (PardAttention node or the inplace block), keyed by its interface names;
    q, k, v are also keyed "q", "k", "v" for the block before it."""
    q, k, v, out = (f"layers.{j}.attention.{name}" for name in ("q", "k", "v", "out"))
    return {
        "q": q,
        "k": k,
        "v": v,
        "k_new": k,
        "v_new": v,
        "out": out,
        "past_len": PAST_LEN,
        "k_cache": kv_cache_name(j, "key"),
        "v_cache": kv_cache_name(j, "value"),
        "k_cache_out": kv_cache_out_name(j, "key"),
        "v_cache_out": kv_cache_out_name(j, "value"),
    }


def _layer_weights(j: int, names: tuple[str, ...]) -> dict[str, str]:
    return {name: f"model.layers.{j}.{name}" for name in names}


def _attention_node_block(arch: ArchSpec, dtype: int) -> onnx.ModelProto:
    """A one-node block holding pard::PardAttention, interface named like the traced blocks' ("io.<name>")."""
    elem = {n: onnx.TensorProto.INT32 if n == "past_len" else dtype for n in ATTENTION_INPUTS + ATTENTION_OUTPUTS}
    node = make_node(
        [f"io.{n}" for n in ATTENTION_INPUTS],
        [f"io.{n}" for n in ATTENTION_OUTPUTS],
        q_heads=arch.q_heads,
        kv_heads=arch.kv_heads,
        head_size=arch.head_dim,
        name="PardAttention",
    )
    graph = onnx.helper.make_graph(
        [node],
        "pard_attention",
        [onnx.helper.make_tensor_value_info(f"io.{n}", elem[n], None) for n in ATTENTION_INPUTS],
        [onnx.helper.make_tensor_value_info(f"io.{n}", elem[n], None) for n in ATTENTION_OUTPUTS],
    )
    return block_model(graph, [opset_import()])


def _trace_head(flavour: _Flavour, examples: _Examples, weights, names: WeightNames) -> onnx.ModelProto:
    rows = (weights[HEAD_ROWS],) if HEAD_ROWS in weights else ()
    return _trace(
        flavour.head,
        (examples.hidden(), weights[names.norm], weights[names.lm_head], *rows),
        ["hidden", "norm", "lm", *(["rows"] if rows else [])],
        list(flavour.head_outputs),
        ({0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, None, None, *([(None,)] if rows else [])),  # *rows arrives as one tuple
    )


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


_LAYERS = {PLAIN: _plain_layers, PLUGIN: _plugin_layers, INPLACE: _fused_layers}
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

    def attention_inputs(self, weights):
        rope = torch.zeros(self.b, 1, self.s, self.arch.head_dim, dtype=self.dtype)
        return (self.hidden(), rope, rope.clone(), *weights)

    def attention_outputs(self, weights):
        a = self.arch
        return (self.hidden(), torch.zeros(self.b, self.s, a.q_heads, a.head_dim, dtype=self.dtype), *weights)

    @staticmethod
    def attention_inputs_dims(n_weights: int):
        rope = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC}
        return ({0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, rope, rope, (None,) * n_weights)

    @staticmethod
    def attention_outputs_dims(n_weights: int):
        return ({0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}, (None,) * n_weights)

    @staticmethod
    def prologue_dims():
        return (
            {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
            {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
            {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
            None,
        )

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
    elem = {
        "int64": onnx.TensorProto.INT64,
        "int32": onnx.TensorProto.INT32,
        "bool": onnx.TensorProto.BOOL,
        "float32": onnx.TensorProto.FLOAT,
        "model": model_dtype,
    }
    return [onnx.helper.make_tensor_value_info(t.name, elem[t.dtype], list(t.dims)) for t in tensors]
