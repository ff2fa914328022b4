"""Weight-only quantization of an exported graph for ONNX Runtime: every linear layer becomes a MatMulNBits node
(com.microsoft) over block-wise int4 or int8 weights with a float scale per block. Tensors between nodes stay float
(accuracy level 4 multiplies in int8 inside the node, quantizing each activation block on the fly).

The exporter writes each nn.Linear as Gemm(transB=1) over its weight [N, K]; onnxruntime's MatMulNBitsQuantizer
takes MatMul over a [K, N] weight only, so a first pass rewrites those Gemms. The LM head is such a Gemm too (in the
head block, whose nodes stitch.py names `head/...`); SmolLM2-style tied weights share the table with the embedding's
Gather, which keeps reading the float table.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..contract import NO_QUANTIZATION, QUANTIZE_SCHEMES
from ..errors import PardExportError

_BITS = {"int4": 4, "int8": 8}
DEFAULT_BLOCK_SIZE = 32
# MatMulNBits accuracy_level: 0 unset (fp32 on x86 CPUs), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations. 4 runs the
# multi-token calls several times faster (0 dequantizes the weights on every call of more than one row). Rounding
# activations to int8 magnifies last-bit differences into different tokens at near-ties, so greedy pard equals ar only
# where both sum every attention product in the same order: in inplace graphs a token's KV row never moves (SmolLM2
# int4: 16 of 16 answers equal over 128 tokens); plain graphs compact their cache, which regroups those sums (2 of 16).
# build refuses 4 with plain attention.
INT8_ACTIVATIONS = 4
DEFAULT_ACCURACY_LEVEL = INT8_ACTIVATIONS
ACCURACY_LEVELS = range(0, 5)
MIN_BLOCK_SIZE = 16  # MatMulNBits: a power of two, at least 16
HEAD_PREFIX = "head/"  # graphs.py places the LM head block under the prefix "head"


@dataclass(frozen=True)
class QuantScheme:
    """How one graph's linear weights are stored: `bits`-bit integers in blocks of `block_size` along K, one scale
    per block (and a zero point unless symmetric), multiplied at MatMulNBits `accuracy_level`."""

    name: str  # one of QUANTIZE_SCHEMES
    bits: int
    block_size: int = DEFAULT_BLOCK_SIZE
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    symmetric: bool = True
    head_quantized: bool = True  # False: the LM head keeps its float weight

    def to_dict(self) -> dict:
        return asdict(self)


def quant_scheme(
    name: str | None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    keep_head_float: bool = False,
    flag: str = "--quantize",
) -> QuantScheme | None:
    """The scheme named `name` (None or "none": no quantization), checked before anything is loaded."""
    if name is None or name == NO_QUANTIZATION:
        return None
    if name not in QUANTIZE_SCHEMES:
        raise PardExportError(f"{flag} {name!r} is not one of {', '.join((*QUANTIZE_SCHEMES, NO_QUANTIZATION))}")
    if block_size < MIN_BLOCK_SIZE or block_size & (block_size - 1):
        raise PardExportError(
            f"--quant-block-size {block_size} must be a power of two, at least {MIN_BLOCK_SIZE} "
            "(MatMulNBits); try 32, 64 or 128"
        )
    if accuracy_level not in ACCURACY_LEVELS:
        raise PardExportError(
            f"--quant-accuracy-level {accuracy_level} must lie between 0 and 4 (MatMulNBits: "
            "0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8)"
        )
    if _BITS[name] != 4:
        _check_bits_supported(_BITS[name], flag, name)
    return QuantScheme(name, _BITS[name], block_size, accuracy_level, head_quantized=not keep_head_float)


def quantize_graph(path: Path, scheme: QuantScheme) -> None:
    """Rewrite the ONNX file `path` (weights in `<name>.data` beside it) in place with its linear weights quantized;
    its weights end up in that same data file (every tensor of 1 KiB or more, page-aligned), nothing else is left."""
    import onnx

    from .onnx_file import save_with_external_data

    model = onnx.load(str(path))  # the float weights, once
    weights = {t.name for t in model.graph.initializer}
    head = {
        n.name
        for n in model.graph.node
        if n.name.startswith(HEAD_PREFIX) and n.op_type in ("Gemm", "MatMul") and n.input[1] in weights
    }
    if not head:
        raise PardExportError(
            f"{path.name}: no LM head node under {HEAD_PREFIX!r}; the graph was not exported by "
            "this version of pard-export: rebuild it"
        )
    keep = set() if scheme.head_quantized else head
    model = gemms_as_matmuls(model, skip=keep)
    model = matmuls_as_nbits(model, scheme, exclude=keep)
    if not any(n.op_type == "MatMulNBits" for n in model.graph.node):
        raise PardExportError(f"{path.name}: no linear layer was quantized (none is a MatMul over a weight)")
    save_with_external_data(model, path)


def gemms_as_matmuls(model, skip: set[str] = frozenset()):
    """Each Gemm over an initializer weight (not named in `skip`) -> MatMul over the weight as [K, N], then Add of
    its bias if it has one (alpha and beta folded into the initializers). Rewrites `model` in place (no copy of the
    weights) and returns it; a weight no other node reads is replaced by its [K, N] form."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers = Counter(name for node in graph.node for name in node.input)
    readers.update(output.name for output in graph.output)
    made: dict[tuple, str] = {}  # (weight, transposed, alpha) -> name of its [K, N] initializer
    nodes = []
    for node in graph.node:
        if node.op_type != "Gemm" or node.name in skip or node.input[1] not in initializers:
            nodes.append(node)
            continue
        attrs = _attributes(node)
        if attrs.get("transA", 0):
            raise PardExportError(
                f"cannot quantize {node.name}: a Gemm with transA=1 (the exporter writes transB=1 "
                "only); rebuild without --quantize"
            )
        alpha, beta, trans_b = attrs.get("alpha", 1.0), attrs.get("beta", 1.0), attrs.get("transB", 0)
        weight = node.input[1]
        key = (weight, trans_b, alpha)
        if key not in made:
            kn_name = f"{weight}.T" if trans_b else f"{weight}.scaled"
            made[key] = weight if not trans_b and alpha == 1.0 else _unique(kn_name, initializers)
            if made[key] != weight:
                array = numpy_helper.to_array(initializers[weight])  # [N, K] (transB) or [K, N]
                array = array.T if trans_b else array
                array = array * array.dtype.type(alpha) if alpha != 1.0 else array
                initializers[made[key]] = numpy_helper.from_array(array, made[key])  # [K, N], a copy
                graph.initializer.append(initializers[made[key]])
        _drop_read(weight, made[key], readers, initializers)
        bias = node.input[2] if len(node.input) > 2 and beta else ""  # beta 0: no bias
        product = f"{node.output[0]}/matmul" if bias else node.output[0]
        nodes.append(_node("MatMul", [node.input[0], made[key]], [product], node.name))
        if bias:
            scaled = _scaled(bias, beta, initializers, graph, node)
            _drop_read(bias, scaled, readers, initializers)
            nodes.append(_node("Add", [product, scaled], [node.output[0]], f"{node.name}/bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    stale = {name for name, count in readers.items() if count == 0 and name in initializers}
    kept = [t for t in graph.initializer if t.name not in stale]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def matmuls_as_nbits(model, scheme: QuantScheme, exclude: set[str] = frozenset()):
    """Each MatMul over a 2-D initializer weight (not named in `exclude`) -> MatMulNBits, by onnxruntime's
    MatMulNBitsQuantizer (round to nearest, per block); the float weights it replaced are dropped."""
    with _quantizer_module() as q:
        bits = {"bits": scheme.bits} if scheme.bits != 4 else {}  # onnxruntime before int8 has no bits (4 only)
        config = q.DefaultWeightOnlyQuantConfig(
            block_size=scheme.block_size, is_symmetric=scheme.symmetric, accuracy_level=scheme.accuracy_level, **bits
        )
        quantizer = q.MatMulNBitsQuantizer(model, nodes_to_exclude=sorted(exclude), algo_config=config)
        quantizer.process()
    return quantizer.model.model


def _drop_read(name: str, replacement: str, readers: Counter, initializers: dict) -> None:
    """One reader of `name` now reads `replacement`; a float initializer nobody reads any more frees its bytes at
    once (it is removed at the end), so the graph never holds two float copies of every weight."""
    if replacement == name:
        return
    readers[name] -= 1
    if readers[name] == 0 and name in initializers:
        initializers[name].ClearField("raw_data")


def _scaled(name: str, factor: float, initializers: dict, graph, node) -> str:
    if factor == 1.0:
        return name
    if name not in initializers:
        raise PardExportError(
            f"cannot quantize {node.name}: a Gemm with beta={factor} over a computed bias; rebuild without --quantize"
        )
    from onnx import numpy_helper

    array = numpy_helper.to_array(initializers[name])
    scaled = _unique(f"{name}.beta", initializers)
    initializers[scaled] = numpy_helper.from_array(array * array.dtype.type(factor), scaled)
    graph.initializer.append(initializers[scaled])
    return scaled


def _node(op_type: str, inputs: list[str], outputs: list[str], name: str):
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, name=name)


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unique(name: str, taken) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}.{i}", i + 1
    return candidate


def _check_bits_supported(bits: int, flag: str, name: str) -> None:
    import inspect

    with _quantizer_module() as q:
        takes_bits = "bits" in inspect.signature(q.DefaultWeightOnlyQuantConfig).parameters
    if not takes_bits:
        import onnxruntime

        raise PardExportError(
            f"{flag} {name} needs an onnxruntime whose MatMulNBitsQuantizer quantizes to {bits} bits "
            f"(installed: {onnxruntime.__version__}); upgrade onnxruntime or use int4"
        )


@contextmanager
def _quantizer_module():
    """onnxruntime's matmul_nbits_quantizer, imported without letting its logging.basicConfig(level=INFO) turn on
    INFO logging process-wide (basicConfig does nothing while the root logger has a handler)."""
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.removeHandler(placeholder)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    yield matmul_nbits_quantizer
