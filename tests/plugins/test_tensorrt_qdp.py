"""The PardAttention plugin driven through TensorRT's own `tensorrt.plugin` Python layer (the quickly deployable
plugin code of the tensorrt-cu12-bindings wheel), as the builder drives an AOT plugin: create it from the ONNX node's
fields, output types and aliasing, output shapes, type/format combinations and tactics, then per tactic the kernel
launch (grid, block, shared memory, scalar arguments) and the kernel. Only TensorRT's compiled core is a stand-in:
its enums and interfaces are placeholder classes, and the expression builder computes with ints, so every symbolic
shape expression comes out as the number TensorRT would compute for these shapes. No GPU: the kernel compile is
replaced by a recording one (tests/plugins/test_tensorrt_plugin.py compiles the real kernel)."""

from __future__ import annotations

import importlib.util
import operator
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from plugins.pard_attention import tensorrt_plugin

pytest.importorskip("triton")
from plugins.pard_attention import triton_fused  # noqa: E402


def _qdp_folder() -> Path:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the tensorrt-cu12-bindings wheel (pip install -e '.[trt-check]')")
    return Path(next(iter(spec.submodule_search_locations))) / "plugin"


class _CoreType(type):
    """Any attribute of a stand-in class (trt.DataType.HALF, trt.DimensionOperation.SUM) is a class of its own,
    made on first use and kept, named as TensorRT prints it ("DataType.HALF")."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        member = _CoreType(name, (_CoreObject,), {"__qualname__": f"{cls.__name__}.{name}"})
        setattr(cls, name, member)
        return member

    def __str__(cls):
        return cls.__qualname__


class _CoreObject(metaclass=_CoreType):
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):  # methods of core objects (Logger.log, the plugin registry): no-ops
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: _CoreObject()


class _CoreModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        member = _CoreType(name, (_CoreObject,), {})
        setattr(self, name, member)
        return member


class _PluginRegistry:
    def __init__(self):
        self.creators = {}

    def register_creator(self, creator, namespace):
        self.creators[creator.name, namespace] = creator
        return True

    def get_creator(self, name, version, namespace):
        return self.creators[name, namespace]


def _stand_in_core() -> _CoreModule:
    trt = _CoreModule("tensorrt")
    trt.__path__ = []
    trt.DimsExprs = lambda rank: [None] * rank
    trt.Dims = type("Dims", (tuple,), {"MAX_DIMS": 8})
    trt.float32 = trt.DataType.FLOAT
    registry = _PluginRegistry()
    trt.get_plugin_registry = lambda: registry
    return trt


_OPERATIONS = {
    "SUM": operator.add,
    "SUB": operator.sub,
    "PROD": operator.mul,
    "FLOOR_DIV": operator.floordiv,
    "CEIL_DIV": lambda a, b: -(-a // b),
    "MIN": min,
    "MAX": max,
}


def _expression_builder(trt):
    class Dim(trt.IDimensionExpr):
        def __init__(self, value: int):
            self.value = value

        def is_constant(self):
            return True

        def get_constant_value(self):
            return self.value

    class Builder:
        def constant(self, value):
            return Dim(value)

        def operation(self, op, a, b):
            return Dim(_OPERATIONS[op.__name__](a.value, b.value))

    return Dim, Builder()


@pytest.fixture
def qdp(monkeypatch):
    """TensorRT's tensorrt.plugin package over the stand-in core, PardAttention registered with it."""
    folder = _qdp_folder()
    trt = _stand_in_core()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    spec = importlib.util.spec_from_file_location(
        "tensorrt.plugin", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    plugin = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", plugin)
    for name in [m for m in sys.modules if m.startswith("tensorrt.plugin.")]:
        monkeypatch.delitem(sys.modules, name)  # its submodules too come from this folder, over this core
    spec.loader.exec_module(plugin)
    trt.plugin = plugin
    monkeypatch.setattr("pard_export.tensorrt_support.require_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_plugin, "_registered", False)
    compiled = []

    def compile_kernel(dtype_name, q_heads, kv_heads, head_size, target=None, config=None):
        compiled.append(config)
        meta = {"num_warps": config.num_warps, "shared": 1024 * config.block_n}
        return b"pard_attention_fused_kernel", b"// ptx", meta

    monkeypatch.setattr(tensorrt_plugin, "compile_kernel", compile_kernel)
    monkeypatch.setattr(tensorrt_plugin, "fitting_tactics", tensorrt_plugin.fitting_tactics.__wrapped__)
    monkeypatch.setattr(tensorrt_plugin, "current_sm_count", lambda: 132)
    monkeypatch.setattr(tensorrt_plugin, "current_max_shared_memory", lambda: 227 * 1024)
    tensorrt_plugin.register()
    tensorrt_plugin.register()  # idempotent: defined once
    yield types.SimpleNamespace(trt=trt, plugin=plugin, compiled=compiled)
    for name in [m for m in sys.modules if m.startswith("tensorrt.plugin.")]:
        del sys.modules[name]


def _field(name, value):
    return types.SimpleNamespace(name=name, data=np.array([value], dtype=np.int64))


def _descs(trt, shapes, dtypes):
    """in_out entries as the builder passes them: DynamicPluginTensorDesc with .desc (type, format, dims)."""
    descs = []
    for shape, dtype in zip(shapes, dtypes):
        desc = trt.DynamicPluginTensorDesc()
        desc.desc = types.SimpleNamespace(type=dtype, format=trt.TensorFormat.LINEAR, scale=1.0, dims=shape)
        descs.append(desc)
    return descs


def test_tensorrts_plugin_layer_builds_every_tactic_of_a_llama_node(qdp):
    trt, plugin = qdp.trt, qdp.plugin
    batch, seq, q_heads, kv_heads, head, capacity = 8, 9, 32, 8, 128, 8208
    creator = plugin._lib.QDP_CREATORS[tensorrt_plugin.PLUGIN_ID]
    # the ONNX parser passes the node's attributes in the creator's field order (the register signature's)
    fields = [_field("num_q_heads", q_heads), _field("num_kv_heads", kv_heads), _field("head_size", head)]
    node = creator.create_plugin(
        "PardAttention", "pard", fields, trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.PREFER_AOT
    )
    assert isinstance(node, plugin._plugin_class._TemplateAOTPlugin)

    half, int32, fp32 = trt.DataType.HALF, trt.DataType.INT32, trt.DataType.FLOAT
    input_types = [half] * 5 + [int32, int32]
    input_shapes = [
        (batch, seq, q_heads, head),
        (batch, seq, kv_heads, head),
        (batch, seq, kv_heads, head),
        (batch, kv_heads, capacity, head),
        (batch, kv_heads, capacity, head),
        (batch,),
        (4096,),
    ]
    output_types = node.get_output_data_types(input_types, [len(s) for s in input_shapes])
    assert output_types == [half, half, half, int32, fp32, fp32]
    assert {o: i for o, i in node.aliased_map.items() if i >= 0} == tensorrt_plugin.ALIASED_OUTPUTS

    dim, builder = _expression_builder(trt)
    output_exprs = node.get_output_shapes([[dim(d) for d in shape] for shape in input_shapes], [], builder)
    output_shapes = [tuple(e.value for e in exprs) for exprs in output_exprs]
    rows = triton_fused.SCRATCH_ROWS
    assert output_shapes == [input_shapes[0], input_shapes[3], input_shapes[4], input_shapes[6], (rows, head), (rows,)]

    in_out = _descs(trt, input_shapes + output_shapes, input_types + output_types)
    offered = node.get_supported_format_combinations(in_out, len(input_shapes))
    assert [d.type for d in offered] == input_types + output_types  # one combination: the network's own types
    node.configure_plugin(in_out[:7], in_out[7:])
    tactics = sorted(node.get_valid_tactics())
    assert tactics == list(range(1, len(triton_fused.TACTICS) + 1))

    for tactic in tactics:
        config = triton_fused.tactic_config(tactic)
        node.set_tactic(tactic)
        launch, scalars = types.SimpleNamespace(), _Scalars()
        node.get_launch_params(None, in_out, len(input_shapes), launch, scalars, builder)
        grid = tuple(getattr(launch, f"grid_{axis}").expr.value for axis in "xyz")
        assert grid == triton_fused.launch_grid(batch, seq, capacity, kv_heads, q_heads // kv_heads, 132, config)
        block = (launch.block_x.expr.value, launch.shared_mem.expr.value)
        assert block == (32 * config.num_warps, 1024 * config.block_n)
        if tactic == 1:
            assert grid == (64, 1, 3)  # 64 (row, kv head) pairs, 36 query rows in one block, 132 SMs: 3 splits
        if config.splits_round_down:
            assert grid == (64, 1, 2)  # 128 programs, no partial second wave
        assert scalars.values == [seq, capacity]  # S and Smax, between the input and the output pointers
        assert qdp.compiled[-1] == config
        name, ptx = node.get_kernel([d.desc for d in in_out[:7]], [d.desc for d in in_out[7:]])
        assert (name, ptx) == (b"pard_attention_fused_kernel", b"// ptx")


def test_a_node_whose_attributes_are_missing_is_refused_by_name(qdp):
    creator = qdp.plugin._lib.QDP_CREATORS[tensorrt_plugin.PLUGIN_ID]
    with pytest.raises(AssertionError, match="Unexpected attribute num_heads"):
        creator.create_plugin(
            "PardAttention",
            "pard",
            [_field("num_heads", 32)],
            qdp.trt.TensorRTPhase.BUILD,
            qdp.trt.QuickPluginCreationRequest.PREFER_AOT,
        )


class _Scalars:
    """The builder's SymExprSetter: how many scalar arguments, then each one."""

    def __init__(self):
        self.nbSymExprs, self.values = 0, []

    def __setitem__(self, index, expr):
        assert index == len(self.values) < self.nbSymExprs
        self.values.append(expr.expr.value)


def _llama_node(qdp, monkeypatch, shared_limit):
    """A PardAttention node (Llama-8B heads, batch 8, S 9) created and taken as far as its tactics, on a GPU with
    shared_limit bytes of shared memory a program; its in_out descs and an int expression builder."""
    trt, plugin = qdp.trt, qdp.plugin
    monkeypatch.setattr(tensorrt_plugin, "current_max_shared_memory", lambda: shared_limit)
    creator = plugin._lib.QDP_CREATORS[tensorrt_plugin.PLUGIN_ID]
    fields = [_field("num_q_heads", 32), _field("num_kv_heads", 8), _field("head_size", 128)]
    node = creator.create_plugin(
        "PardAttention", "pard", fields, trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.PREFER_AOT
    )
    half, int32 = trt.DataType.HALF, trt.DataType.INT32
    input_types = [half] * 5 + [int32, int32]
    input_shapes = [
        (8, 9, 32, 128),
        (8, 9, 8, 128),
        (8, 9, 8, 128),
        (8, 8, 8208, 128),
        (8, 8, 8208, 128),
        (8,),
        (4096,),
    ]
    output_types = node.get_output_data_types(input_types, [len(s) for s in input_shapes])
    dim, builder = _expression_builder(trt)
    output_exprs = node.get_output_shapes([[dim(d) for d in shape] for shape in input_shapes], [], builder)
    output_shapes = [tuple(e.value for e in exprs) for exprs in output_exprs]
    in_out = _descs(trt, input_shapes + output_shapes, input_types + output_types)
    node.get_supported_format_combinations(in_out, 7)
    node.configure_plugin(in_out[:7], in_out[7:])
    return node, in_out, builder


def test_only_tactics_whose_shared_memory_the_gpu_has_are_offered(qdp, monkeypatch):
    small_tiles = 1 + triton_fused.TACTICS.index(triton_fused.FusedConfig(block_n=32))
    node, _, _ = _llama_node(
        qdp, monkeypatch, 48 * 1024
    )  # the stand-in compile: 32 KiB for 32-key tiles, 64 KiB for 64-key ones
    assert node.get_valid_tactics() == [small_tiles]


def test_a_kernel_larger_than_the_gpu_allows_is_refused_by_name(qdp, monkeypatch):
    """None fits: tactic 1 is offered, so that aot_impl says what is wrong instead of TensorRT finding no tactic."""
    node, in_out, builder = _llama_node(qdp, monkeypatch, 16 * 1024)
    assert node.get_valid_tactics() == [1]
    node.set_tactic(1)
    with pytest.raises(ValueError, match="needs 65536 bytes of shared memory a program; this GPU allows 16384"):
        node.get_launch_params(None, in_out, 7, types.SimpleNamespace(), _Scalars(), builder)
