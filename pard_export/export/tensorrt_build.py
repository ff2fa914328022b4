"""The tensorrt backend's build stage: ONNX graphs -> serialized TensorRT plans (draft.plan, target.plan).

Three parts:
- `TrtBuildSettings` and `optimization_profiles`: pure; the shape ranges of every graph input, derived from the
  IO contract (pard_export/contract.py) so that a graph flavour with other inputs only adds rows to `DIM_VALUES`.
- `build_plan`: the TensorRT builder, written against TensorRT 10's Python API (it needs a GPU host).
- `check_plain_graphs`: what CI can check without a GPU: TensorRT-RTX (`tensorrt_rtx`, which builds on CPU)
  parses the plain graphs and builds a plan for a chosen compute capability, and `polygraphy check lint` passes.

TensorRT is imported inside the functions that need it (pard_export.tensorrt_support.require_tensorrt).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..contract import BATCH, CAPACITY, PAST, SEQUENCE, TOTAL, GraphSpec, cache_capacity
from ..errors import BackendUnavailableError, PardExportError, TrtBuildError
from ..files import write_atomic
from ..tensorrt_support import require_tensorrt

TRT_DTYPES = ("float16", "bfloat16")
PLAN_SUFFIX = ".plan"
RTX_MISSING = (
    "TensorRT-RTX is not installed; pip install tensorrt-rtx-cu12 (it builds plans without a GPU) to check the graphs"
)


@dataclass(frozen=True)
class TrtBuildSettings:
    """What a plan is built for. Shapes outside these ranges are refused by the engine at run time."""

    dtype: str = "float16"  # float16 | bfloat16: the precision the graphs were exported in (strongly typed)
    k: int = 8  # drafts per step: decode/verify calls have S <= k + 1
    max_batch: int = 8
    prefill_chunk: int = 512  # the longest S of one call (a longer prompt is prefilled in chunks)
    max_seq_len: int = 8192  # P + S of every call
    opt_batch: int = 1  # the batch the kernels are tuned for
    opt_past: int = 256  # the cached length decode/verify kernels are tuned for (plain graphs: in plugin graphs
    # the cached length is past_len's value, which the builder makes up when it times tactics)
    timing_cache: Path | None = None  # read if present, written after each build (reused across builds)
    strongly_typed: bool = True  # the ONNX dtypes decide each layer's precision; else FP16/BF16 builder flags
    workspace_bytes: int | None = None  # the builder's workspace pool limit (None: TensorRT's default)

    def __post_init__(self):
        if self.dtype not in TRT_DTYPES:
            raise PardExportError(f"the tensorrt backend builds {' or '.join(TRT_DTYPES)} plans, not {self.dtype!r}")
        for name in ("k", "max_batch", "prefill_chunk", "max_seq_len", "opt_batch"):
            if getattr(self, name) < 1:
                raise PardExportError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.opt_batch > self.max_batch:
            raise PardExportError(f"opt_batch {self.opt_batch} exceeds max_batch {self.max_batch}")
        if self.k + 1 >= self.max_seq_len:
            raise PardExportError(f"max_seq_len {self.max_seq_len} leaves no room for k + 1 = {self.k + 1} tokens")

    @property
    def chunk(self) -> int:
        """The longest S of one call: the prefill chunk, at least k + 1 and below max_seq_len."""
        return max(self.k + 1, min(self.prefill_chunk, self.max_seq_len - 1))


@dataclass(frozen=True)
class ProfilePoint:
    """One corner of an optimization profile: B rows, S new tokens each, P tokens already cached."""

    batch: int
    sequence: int
    past: int


# How each symbolic dimension of the contract follows from a profile point. A graph flavour with other
# symbolic dimensions (the plugin graphs' cache capacity, say) adds rows here; ints in a spec are fixed dims.
DimValue = Callable[[ProfilePoint, TrtBuildSettings], int]
DIM_VALUES: dict[str, DimValue] = {
    BATCH: lambda p, s: p.batch,
    SEQUENCE: lambda p, s: p.sequence,
    PAST: lambda p, s: p.past,
    # A box of per-dimension ranges cannot say P + S <= max_seq_len: P reaches max_seq_len - 1 (decode at the
    # end) and S reaches the chunk, so the max corner caps T, and TensorRT warns that kMAX is not consistent.
    TOTAL: lambda p, s: min(p.past + p.sequence, s.max_seq_len),
    # Plugin flavour: preallocated caches, the same capacity at every corner (one allocation serves every call)
    CAPACITY: lambda p, s: cache_capacity(s.max_seq_len, s.k),
}

Shape = tuple[int, ...]
POLYGRAPHY_MISSING = "polygraphy is not installed; pip install 'pard-export[tensorrt]' (its Profile holds the shapes)"


def profile_points(settings: TrtBuildSettings) -> dict[str, tuple[ProfilePoint, ProfilePoint, ProfilePoint]]:
    """The corners of each profile: `step` (decode, verify, draft: S <= k + 1) and `prefill` (S up to the chunk)."""
    n, step, chunk = settings.max_seq_len, settings.k + 1, settings.chunk
    smallest = ProfilePoint(1, 1, 0)
    points = {
        "step": (
            smallest,
            ProfilePoint(settings.opt_batch, step, min(settings.opt_past, n - step)),
            ProfilePoint(settings.max_batch, step, n - 1),
        ),
    }
    if chunk > step:
        points["prefill"] = (
            smallest,
            ProfilePoint(settings.opt_batch, chunk, 0),
            ProfilePoint(settings.max_batch, chunk, n - 1),
        )
    return points


def optimization_profiles(
    spec: GraphSpec, settings: TrtBuildSettings, dim_values: Mapping[str, DimValue] = DIM_VALUES
) -> dict:
    """Profile name ("step", "prefill") -> a Polygraphy Profile: (min, opt, max) for every input of `spec`, in the
    graph's input order."""
    try:
        from polygraphy.backend.trt import Profile
    except ImportError as e:
        raise BackendUnavailableError(POLYGRAPHY_MISSING) from e
    profiles = {}
    for name, corners in profile_points(settings).items():
        profile = Profile()
        for tensor in spec.inputs:
            profile.add(
                tensor.name, *(_shape(tensor.name, tensor.dims, point, settings, dim_values) for point in corners)
            )
        profiles[name] = profile
    return profiles


def within(profile, shapes: Mapping[str, Shape]) -> bool:
    """Whether every given input shape lies within the Polygraphy Profile's [min, max] box."""
    return all(
        name in profile
        and len(shape) == len(profile[name].min)
        and all(lo <= d <= hi for d, lo, hi in zip(shape, profile[name].min, profile[name].max))
        for name, shape in shapes.items()
    )


def _shape(tensor: str, dims, point: ProfilePoint, settings: TrtBuildSettings, dim_values) -> Shape:
    shape = []
    for dim in dims:
        if isinstance(dim, int):
            shape.append(dim)
        elif dim in dim_values:
            shape.append(int(dim_values[dim](point, settings)))
        else:
            raise PardExportError(
                f"input {tensor} has a dimension {dim!r} that no optimization profile rule covers; add it to "
                "pard_export.export.tensorrt_build.DIM_VALUES"
            )
    return tuple(shape)


def build_plan(onnx_path: Path, plan_path: Path, profiles: Mapping, settings: TrtBuildSettings) -> int:
    """Parse `onnx_path` with TensorRT's ONNX parser and write a serialized engine to `plan_path`; returns its size.

    A strongly typed network (the ONNX dtypes decide precisions), PREFER_AOT_PYTHON_PLUGINS (a plugin with both
    an AOT and a JIT implementation embeds the AOT kernel, so the plan needs no Python), aliased plugin IO (the
    PardAttention caches are updated in place), one optimization profile per `profiles` entry (in order), and a
    timing cache reused across builds. Register the plugins (plugins.pard_attention.tensorrt_plugin.register) first."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    if settings.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = _parse(trt, builder, logger, onnx_path, flags)
    config = builder.create_builder_config()
    if not settings.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16 if settings.dtype == "float16" else trt.BuilderFlag.BF16)
    config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    if settings.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    cache = _timing_cache(config, settings.timing_cache)
    _add_profiles(builder, config, profiles)
    plan = _serialize(builder, network, config, onnx_path)
    plan_path.write_bytes(plan)
    if settings.timing_cache is not None:
        write_atomic(settings.timing_cache, memoryview(cache.serialize()))
    return len(plan)


def _parse(trt, builder, logger, onnx_path: Path, flags: int):
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves the external data file (<graph>.onnx.data) beside the graph
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise TrtBuildError(
            f"the TensorRT ONNX parser rejected {onnx_path.name}: {errors[0] if errors else 'no reason given'}"
        )
    return network


def _add_profiles(builder, config, profiles: Mapping) -> None:
    """The Polygraphy Profiles into the builder config (by hand, not Profile.to_trt: that needs `tensorrt` itself,
    and TensorRT-RTX builds here without it)."""
    for name, profile in profiles.items():
        trt_profile = builder.create_optimization_profile()
        for tensor, shapes in profile.items():
            trt_profile.set_shape(tensor, shapes.min, shapes.opt, shapes.max)
        if config.add_optimization_profile(trt_profile) < 0:
            raise TrtBuildError(f"TensorRT refused the {name!r} optimization profile (min <= opt <= max per dim?)")


def _serialize(builder, network, config, onnx_path: Path) -> bytes:
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TrtBuildError(f"TensorRT could not build a plan from {onnx_path.name}; its log above says why")
    return bytes(plan)


def _timing_cache(config, path: Path | None):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


# --- What CI checks without a GPU -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RtxBuild:
    role: str
    plan_bytes: int
    seconds: float


@dataclass(frozen=True)
class LintReport:
    passing: int  # nodes polygraphy ran without complaint
    failing: tuple[str, ...]
    entries: tuple[dict, ...]  # polygraphy's lint entries (errors and warnings, with their nodes)

    @property
    def ok(self) -> bool:
        """No failing node and no entry above a warning (an unknown custom op is only a warning to polygraphy)."""
        return not self.failing and all(e.get("level") == "warning" for e in self.entries)

    @property
    def clean(self) -> bool:
        """Not even a warning: what the plain graphs (standard ONNX ops only) must give."""
        return not self.failing and not self.entries


def build_rtx_plan(onnx_path: Path, profiles: Mapping, compute_capability: str = "SM89") -> RtxBuild:
    """Parse `onnx_path` with TensorRT-RTX and build (never deserialize: no GPU here) a plan for one compute
    capability (SM75, SM80, SM86, SM89, SM120). Proves the plain graphs parse and build in a TensorRT-family
    builder; TensorRT-RTX has no plugin layers, so the plugin-flavour graphs cannot be checked this way."""
    try:
        import tensorrt_rtx as trt
    except ImportError as e:
        raise BackendUnavailableError(RTX_MISSING) from e
    if compute_capability not in trt.ComputeCapability.__members__:
        choices = ", ".join(m for m in trt.ComputeCapability.__members__ if m.startswith("SM"))
        raise PardExportError(f"compute capability {compute_capability!r} is not one of {choices}")
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, logger, onnx_path, 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    if not config.set_compute_capability(trt.ComputeCapability.__members__[compute_capability], 0):
        raise TrtBuildError(f"TensorRT-RTX refused compute capability {compute_capability}")
    _add_profiles(builder, config, profiles)
    plan = _serialize(builder, network, config, onnx_path)
    return RtxBuild(onnx_path.stem, len(plan), time.perf_counter() - start)


def lint_onnx(
    onnx_path: Path, input_shapes: Mapping[str, Shape], value_ranges: Mapping[str, tuple[int, int]] = {}
) -> LintReport:
    """`polygraphy check lint` on one graph (ONNX checker + ONNX Runtime node by node, on generated inputs of the
    given shapes)."""
    polygraphy = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    if polygraphy is None:
        raise BackendUnavailableError("polygraphy is not installed; pip install polygraphy onnx-graphsurgeon")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "lint.json"
        command = [polygraphy, "check", "lint", str(onnx_path), "-o", str(report)]
        if input_shapes:
            command += ["--input-shapes"] + [
                f"{name}:[{','.join(map(str, shape))}]" for name, shape in input_shapes.items()
            ]
        if value_ranges:
            command += ["--val-range"] + [f"{name}:[{lo},{hi}]" for name, (lo, hi) in value_ranges.items()]
        done = subprocess.run(command, capture_output=True, text=True)
        if not report.is_file():
            last = (done.stderr or done.stdout).strip().splitlines()
            raise TrtBuildError(
                f"polygraphy check lint did not run on {onnx_path.name}: {last[-1] if last else done.returncode}"
            )
        data = json.loads(report.read_text())
    summary = data.get("summary", {})
    return LintReport(
        len(summary.get("passing", [])), tuple(summary.get("failing", [])), tuple(data.get("lint_entries", []))
    )


def check_plain_graphs(
    engine_dir: str | Path, compute_capability: str = "SM89", *, max_batch: int = 4, prefill_chunk: int = 64
) -> dict[str, tuple[RtxBuild, LintReport]]:
    """For each graph of an onnxruntime engine directory: a TensorRT-RTX plan built with this module's profiles,
    and polygraphy's lint on the step profile's opt shapes. Raises TrtBuildError when either fails."""
    from ..manifest import read_manifest

    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    settings = TrtBuildSettings(
        k=manifest.k,
        max_batch=max_batch,
        prefill_chunk=prefill_chunk,
        max_seq_len=manifest.max_seq_len,
        opt_past=min(16, manifest.max_seq_len // 2),
    )
    results = {}
    for role, entry in manifest.models.items():
        path = engine_dir / entry.file
        profiles = optimization_profiles(entry.io, settings)
        built = build_rtx_plan(path, profiles, compute_capability)
        opt_shapes = {name: shapes.opt for name, shapes in profiles["step"].items()}
        report = lint_onnx(path, opt_shapes, {"input_ids": (0, entry.vocab_rows - 1), "attention_mask": (1, 1)})
        if not report.clean:
            problem = report.entries[0].get("message", "").strip() if report.entries else ", ".join(report.failing)
            raise TrtBuildError(f"polygraphy check lint failed on {entry.file}: {problem}")
        results[role] = (built, report)
    return results


# --- The build stage's entry point (pard-export build --backend tensorrt) --------------------------------------


def check_tensorrt_build(dtype: str) -> None:
    """What `build --backend tensorrt` checks before loading or writing anything: TensorRT importable, dtype."""
    require_tensorrt()
    if dtype not in TRT_DTYPES:
        raise PardExportError(
            f"--backend tensorrt builds {' or '.join(TRT_DTYPES)} plans; pass --dtype float16 or bfloat16"
        )


def compile_plans(staging: Path, specs: Mapping[str, GraphSpec], settings: TrtBuildSettings) -> dict[str, str]:
    """Build <role>.plan from each exported <role>.onnx (plugin flavour) in `staging`, through its TensorRT form
    (tensorrt_lowering), then remove the ONNX files (the plans hold the weights). Returns {role: plan file name}."""
    from .tensorrt_lowering import lower_for_tensorrt

    _register_plugins()
    plans = {}
    for role, spec in specs.items():
        lowered = lower_for_tensorrt(staging / f"{role}.onnx", settings.max_batch, settings.chunk)
        plan_path = staging / f"{role}{PLAN_SUFFIX}"
        build_plan(lowered, plan_path, optimization_profiles(spec, settings), settings)
        lowered.unlink()
        plans[role] = plan_path.name
    for role in specs:
        for leftover in staging.glob(f"{role}.onnx*"):
            leftover.unlink()
    return plans


def _register_plugins() -> None:
    try:
        from plugins.pard_attention import tensorrt_plugin
    except ImportError as e:
        raise PardExportError(
            "the PardAttention TensorRT plugin (plugins/pard_attention) is not importable; run pard-export from the "
            "repository root or put it on PYTHONPATH"
        ) from e
    require_tensorrt()
    tensorrt_plugin.register()
