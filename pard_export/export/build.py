"""`pard-export build`: check the pair, export both graphs, compile, and write an engine directory atomically."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from plugins.cached_attention import build as native_build

from .. import __version__
from ..contract import (
    ATTENTION_KERNELS,
    ATTENTIONS,
    BACKENDS,
    DRAFT,
    DRAFT_AR,
    DTYPES,
    INPLACE,
    NATIVE_KERNEL,
    NATIVE_KERNEL_LIBRARY,
    ONNX_KERNEL,
    PLAIN,
    PLUGIN,
    TARGET,
    GraphSpec,
)
from ..errors import PardExportError
from ..files import staging_dir
from ..manifest import CALIBRATION_FILE, TOKENIZER_DIR, Manifest, ModelEntry, graph_file, hash_files, write_manifest
from . import checks
from .arch import ArchSpec
from .quantize import (
    DEFAULT_ACCURACY_LEVEL,
    DEFAULT_BLOCK_SIZE,
    INT8_ACTIVATIONS,
    QuantScheme,
    quant_scheme,
    quantize_graph,
)
from .sources import ModelSource, resolve_pair

DEFAULT_MAX_SEQ_LEN = 8192
_TOOLS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-extensions", "tensorrt", "triton")
_STAGES = ("check", "load", "export target", "export draft", "quantize", "compile", "manifest", "calibrate")
AUTO_K = "auto"
AUTO_KERNEL = "auto"  # --attention-kernel auto: native where it applies and compiles
AUTO_MAX_K = 16  # --k auto: candidates 1..AUTO_MAX_K


def build(
    target: str,
    k: int | str = 8,
    *,
    draft: str | None = None,
    out: str | Path | None = None,
    backend: str = "onnxruntime",
    dtype: str = "float32",
    max_seq_len: int | None = None,
    mask_token_id: int | None = None,
    force: bool = False,
    with_ar_draft: bool = False,
    attention: str | None = None,
    attention_kernel: str | None = None,
    max_batch: int = 8,
    opt_batch: int = 1,
    prefill_chunk: int = 512,
    timing_cache: str | Path | None = None,
    quantize: str | None = None,
    draft_quantize: str | None = None,
    keep_head_float: bool = False,
    quant_block_size: int = DEFAULT_BLOCK_SIZE,
    quant_accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    calibration: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Export target.onnx and draft.onnx (k fixed mask slots) into an engine directory; returns its path.
    with_ar_draft adds draft_ar.onnx, the draft as a plain AR model, for the ar-draft baseline. attention="plugin"
    exports the PardAttention flavour (preallocated KV buffers, contract.py) instead of the plain graphs;
    attention="inplace" (the onnxruntime default) exports graphs that write their new KV rows into buffers the
    runtime binds in place and attend over them (TensorScatter); tensorrt runs only the plugin flavour.
    attention_kernel (inplace only): "native" compiles plugins/cached_attention into the engine and gives each layer
    one node of it, "onnx" keeps the block of standard ops; None or "auto": native where this host can compile it
    (a C++ compiler and ONNX Runtime's headers) and the engine is float32 onnxruntime, else onnx.
    backend="tensorrt" exports that flavour and builds draft.plan / target.plan for batches up to max_batch and calls
    of up to prefill_chunk tokens, its kernels and plugin tactics tuned for batch opt_batch, reusing the TensorRT
    timing cache file `timing_cache` if given.
    quantize="int4"|"int8" (onnxruntime only) stores the target's linear weights, LM head included unless
    keep_head_float, as MatMulNBits blocks of quant_block_size with one scale each (export/quantize.py); the draft and
    draft_ar follow draft_quantize (None: the same as the target; "none": float).
    k="auto" (onnxruntime) exports a draft of AUTO_MAX_K mask slots, calibrates the engine on this machine with the
    prompts of `calibration` (JSON lines; default: the bundled ones), keeps the k of the best modelled speed
    (runtime/calibration.py modelled_speeds) and records the sweep in the manifest's k_selection."""
    auto = k == AUTO_K
    _check_auto(auto, backend, calibration)
    k = AUTO_MAX_K if auto else k
    checks.check_k(k)
    _check_choice("backend", backend, BACKENDS)
    _check_choice("dtype", dtype, DTYPES)
    attention = _attention_for(backend, attention)
    kernel = _kernel_for(backend, attention, dtype, attention_kernel)
    schemes = _quant_schemes(
        backend, attention, quantize, draft_quantize, keep_head_float, quant_block_size, quant_accuracy_level
    )
    if attention == PLUGIN and backend == "onnxruntime" and dtype != "float32":
        raise PardExportError(
            "plugin-attention engines run on ONNX Runtime in float32 only (onnxruntime-extensions' Python ops have no "
            "float16); use --dtype float32, or --attention plain"
        )
    if dtype == "bfloat16" and backend == "onnxruntime":
        raise PardExportError(
            "bfloat16 engines need the tensorrt backend: the onnxruntime runtime keeps its KV cache in numpy, "
            "which has no bfloat16; use --dtype float16 or float32"
        )
    if backend == "tensorrt":
        from .tensorrt_build import check_tensorrt_build

        if not 1 <= opt_batch <= max_batch:
            raise PardExportError(f"--opt-batch {opt_batch} must lie between 1 and --max-batch {max_batch}")
        check_tensorrt_build(dtype)  # TensorRT importable, fp16/bf16: before anything is loaded or written
    flavour = {PLUGIN: "-plugin", PLAIN: "-plain"}.get(attention, "")  # inplace, the onnxruntime default: none
    name = f"{_short_name(target)}-k{AUTO_K if auto else k}-{backend}{flavour}{_quant_suffix(schemes)}"
    out = Path(out) if out else Path("engines") / name
    if out.exists() and any(out.iterdir()) and not force:
        raise PardExportError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")
    with _stages(progress) as stage:
        stage("check")
        pair = _checked_pair(target, draft, k, mask_token_id, max_seq_len)
        with staging_dir(out) as staging:
            plans: dict[str, str] = {}  # role -> plan file (tensorrt)
            if kernel == NATIVE_KERNEL:
                _compile_native_kernel(staging)
            specs = _export_pair(pair, staging, stage, k, dtype, with_ar_draft, attention, kernel)
            _quantize_graphs(staging, stage, schemes, specs)
            if backend == "onnxruntime":  # tensorrt plans hold their own weights
                _share_draft_weights(staging, specs)
            stage("compile")
            if backend == "tensorrt":
                sizes = dict(max_batch=max_batch, opt_batch=opt_batch, prefill_chunk=prefill_chunk)
                plans = _compile_tensorrt(staging, specs, pair, k, dtype, sizes, timing_cache)
            else:
                _compile_onnxruntime(staging, specs)
            stage("manifest")
            pair.target_tokenizer.save_pretrained(staging / TOKENIZER_DIR)
            if not (staging / TOKENIZER_DIR / "tokenizer.json").is_file():
                raise PardExportError(
                    "the target's tokenizer has no fast (tokenizer.json) form, which the runtime needs"
                )
            manifest = _manifest(pair, specs, staging, k, dtype, backend, attention, plans)
            quantized = {role: scheme.to_dict() for role, scheme in schemes.items() if role in specs}
            manifest = replace(manifest, quantization=quantized, attention_kernel=kernel)
            write_manifest(staging, manifest)
            if auto:
                stage("calibrate")
                _choose_k(pair, staging, manifest, specs, schemes, dtype, calibration)
    return out


def _check_auto(auto: bool, backend: str, calibration) -> None:
    if not auto:
        if calibration is not None:
            raise PardExportError("--calibration is read by --k auto only; pass --k auto or leave it out")
        return
    if backend != "onnxruntime":
        raise PardExportError(
            "--k auto measures the engine on this machine, which runs onnxruntime engines only; "
            "pass a number with --backend tensorrt (the sweep of an onnxruntime build is a guide)"
        )
    if calibration is not None:
        from ..prompts import load_prompts

        load_prompts(Path(calibration))  # unreadable or empty: fail before anything is built


def _choose_k(
    pair: _Pair,
    staging: Path,
    manifest: Manifest,
    specs: dict[str, GraphSpec],
    schemes: dict[str, QuantScheme],
    dtype: str,
    calibration,
) -> None:
    """Calibrate the AUTO_MAX_K engine in `staging`, keep the k with the best modelled speed (the draft exported
    again with k slots), and calibrate the final engine, so its first use starts at once."""
    from ..runtime import Session
    from ..runtime.calibration import modelled_speeds

    with Session(staging) as session:
        measured = session.calibrate(force=True, prompts=calibration)
    speeds = modelled_speeds(measured, manifest.k, range(1, manifest.k + 1))
    best = max(speeds, key=lambda k: (round(speeds[k], 6), -k))
    if best != manifest.k:
        specs = _export_draft_again(pair, staging, best, dtype, manifest, schemes, specs)
    selection = {
        "prompts": Path(calibration).name if calibration else "bundled",
        "acceptance": list(measured.acceptance),
        "k_sweep": {str(k): speed for k, speed in speeds.items()},
        "k": best,
    }
    (staging / CALIBRATION_FILE).unlink(missing_ok=True)  # measured with the AUTO_MAX_K draft
    final = _manifest(pair, specs, staging, best, dtype, manifest.backend, manifest.attention, {})
    settings = dict(
        quantization=manifest.quantization, k_selection=selection, attention_kernel=manifest.attention_kernel
    )
    write_manifest(staging, replace(final, **settings))
    with Session(staging) as session:
        session.calibrate(force=True, prompts=calibration)


def _export_draft_again(
    pair: _Pair,
    staging: Path,
    k: int,
    dtype: str,
    manifest: Manifest,
    schemes: dict[str, QuantScheme],
    specs: dict[str, GraphSpec],
) -> dict[str, GraphSpec]:
    import torch

    from .onnx_file import data_file, own_weight_file

    model, weights = pair.draft.load_for_export(getattr(torch, dtype))
    if DRAFT_AR in specs:
        own_weight_file(staging / graph_file(DRAFT_AR), staging / graph_file(DRAFT))
    for stale in (staging / graph_file(DRAFT), data_file(staging / graph_file(DRAFT))):
        stale.unlink(missing_ok=True)
    spec = _export_draft_graph(pair, staging, k, manifest.attention, manifest.attention_kernel, model, weights)
    if DRAFT in schemes:
        quantize_graph(staging / graph_file(DRAFT), schemes[DRAFT])
    specs = {**specs, DRAFT: spec}
    _share_draft_weights(staging, specs)
    _compile_onnxruntime(staging, {DRAFT: spec})
    return specs


def _share_draft_weights(staging: Path, specs: dict[str, GraphSpec]) -> None:
    """draft_ar.onnx reads the draft's weight file when the two are the same bytes (they are unless quantized
    differently), so the engine holds them once."""
    from .onnx_file import share_weight_file  # onnx: imported where graphs are written

    if DRAFT_AR in specs and (staging / graph_file(DRAFT)).is_file():
        share_weight_file(staging / graph_file(DRAFT_AR), staging / graph_file(DRAFT))


@dataclass(frozen=True)
class _Pair:
    """A checked target/draft pair: sources, architectures, tokenizer and the settings derived from them."""

    target: ModelSource
    draft: ModelSource
    target_arch: ArchSpec
    draft_arch: ArchSpec
    target_tokenizer: object
    vocab: int
    mask_id: int
    eos_ids: tuple[int, ...]
    max_seq_len: int


def _checked_pair(target: str, draft: str | None, k: int, mask_override: int | None, max_seq_len: int | None) -> _Pair:
    target_src, draft_src, preset_mask, _ = resolve_pair(target, draft)
    target_cfg = target_src.load_config()
    draft_cfg = target_cfg if draft_src == target_src else draft_src.load_config()
    target_arch = ArchSpec.from_hf_config(target_cfg, "target")
    draft_arch = ArchSpec.from_hf_config(draft_cfg, "draft")
    target_tok = target_src.load_tokenizer()
    draft_tok = target_tok if draft_src == target_src else draft_src.load_tokenizer()
    vocab = checks.shared_vocab(target_tok, draft_tok)
    checks.check_rows("target", target_arch.vocab_rows, vocab)
    checks.check_rows("draft", draft_arch.vocab_rows, vocab)
    eos_ids = _eos_ids(target_src, target_tok)
    mask_id = checks.resolve_mask_id(draft_cfg, mask_override, preset_mask)
    specials = [("end-of-sequence", e) for e in eos_ids]
    specials += [("beginning-of-sequence", target_tok.bos_token_id), ("padding", target_tok.pad_token_id)]
    checks.check_mask_id(mask_id, draft_arch.vocab_rows, specials)
    limit = getattr(target_cfg, "max_position_embeddings", None) or DEFAULT_MAX_SEQ_LEN
    max_seq_len = max_seq_len or min(limit, DEFAULT_MAX_SEQ_LEN)
    checks.check_max_seq_len(max_seq_len, k)
    if max_seq_len > limit:
        raise PardExportError(f"--max-seq-len {max_seq_len} exceeds the target's max_position_embeddings {limit}")
    return _Pair(target_src, draft_src, target_arch, draft_arch, target_tok, vocab, mask_id, eos_ids, max_seq_len)


def _export_pair(
    pair: _Pair, staging: Path, stage, k: int, dtype: str, with_ar_draft: bool, attention: str, kernel: str
) -> dict[str, GraphSpec]:
    import torch

    from .graphs import export_target

    torch_dtype = getattr(torch, dtype)
    stage("load")
    target_model, target_weights = pair.target.load_for_export(torch_dtype)
    draft = (target_model, target_weights) if pair.draft == pair.target else pair.draft.load_for_export(torch_dtype)
    stage("export target")
    target_io = export_target(
        target_model,
        pair.target_arch,
        staging / graph_file(TARGET),
        attention=attention,
        kernel=kernel,
        weights=target_weights,
        progress=_weight_progress(stage, "export target", pair.target_arch.layers),
    )
    del target_model, target_weights  # a model loaded whole is freed before the draft's export
    stage("export draft")
    specs = {TARGET: target_io}
    specs[DRAFT] = _export_draft_graph(pair, staging, k, attention, kernel, *draft, stage=stage)
    if with_ar_draft:
        path = staging / graph_file(DRAFT_AR)
        specs[DRAFT_AR] = export_target(
            draft[0], pair.draft_arch, path, DRAFT_AR, attention, kernel=kernel, weights=draft[1]
        )
    return specs


def _export_draft_graph(
    pair: _Pair, staging: Path, k: int, attention: str, kernel: str, model, weights, stage=None
) -> GraphSpec:
    from .graphs import export_draft

    progress = _weight_progress(stage, "export draft", pair.draft_arch.layers) if stage else None
    return export_draft(
        model,
        pair.draft_arch,
        staging / graph_file(DRAFT),
        k=k,
        vocab=pair.vocab,
        mask_id=pair.mask_id,
        attention=attention,
        kernel=kernel,
        weights=weights,
        progress=progress,
    )


def _weight_progress(stage, name: str, layers: int):
    """progress(weight name) for export_*: the stage shows the decoder layer being written."""

    def progress(weight: str) -> None:
        if weight.startswith("model.layers."):
            stage(name, detail=f"layer {int(weight.split('.')[2]) + 1}/{layers}")

    return progress


def _quant_schemes(
    backend: str,
    attention: str,
    quantize: str | None,
    draft_quantize: str | None,
    keep_head_float: bool,
    block_size: int,
    accuracy_level: int,
) -> dict[str, QuantScheme]:
    """role -> its weight quantization, checked before anything is loaded; a role left out stays float. draft_ar
    follows the draft."""
    settings = dict(block_size=block_size, accuracy_level=accuracy_level, keep_head_float=keep_head_float)
    target = quant_scheme(quantize, **settings)
    draft = quant_scheme(quantize if draft_quantize is None else draft_quantize, flag="--draft-quantize", **settings)
    if (target or draft) and backend != "onnxruntime":
        raise PardExportError(
            f"--quantize is not supported for {backend} plans: it makes ONNX Runtime MatMulNBits "
            "graphs; use --backend onnxruntime"
        )
    if keep_head_float and not (target or draft):
        raise PardExportError("--keep-head-float applies to quantized graphs; add --quantize int4 or int8")
    if target and target.accuracy_level == INT8_ACTIVATIONS and attention == PLAIN:
        raise PardExportError(
            "a plain-attention target with int8 activations (--quant-accuracy-level 4) would make "
            "greedy pard part from ar; use --attention inplace or --quant-accuracy-level 0"
        )
    return {role: scheme for role, scheme in ((TARGET, target), (DRAFT, draft), (DRAFT_AR, draft)) if scheme}


def _quant_suffix(schemes: dict[str, QuantScheme]) -> str:
    """The default --out's tail: -int4 (both quantized alike), -int4-draft-float, -draft-int8, ..."""
    target, draft = (schemes[role].name if role in schemes else None for role in (TARGET, DRAFT))
    if target == draft:
        return f"-{target}" if target else ""
    return (f"-{target}" if target else "") + f"-draft-{draft or 'float'}"


def _quantize_graphs(staging: Path, stage, schemes: dict[str, QuantScheme], specs: dict[str, GraphSpec]) -> None:
    """Quantize the exported graph of each role in `schemes`."""
    stage("quantize")
    for role, scheme in schemes.items():
        if role in specs:
            quantize_graph(staging / graph_file(role), scheme)


def _compile_onnxruntime(staging: Path, specs: dict[str, GraphSpec]) -> None:
    """Load each graph once, its fusions applied, so a graph ONNX Runtime rejects fails the build, not the user.

    At the EXTENDED level, not ALL as the runtime: on the CPU, ALL's last stage turns every float16 weight into a
    float32 copy (a 4-layer target of Llama-3.1-8B's width: 7.6 GB against 0.06 GB, the weights left mapped)."""
    import onnxruntime as ort

    from ..runtime.backend_ort import inference_session

    for role, spec in specs.items():
        file = graph_file(role)
        options = ort.SessionOptions()  # one per graph: a plugin graph registers the custom op library into it
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            inference_session(staging / file, spec, options, ["CPUExecutionProvider"])
        except ImportError as e:
            raise PardExportError(
                f"plugin-attention graphs need onnxruntime-extensions to load on ONNX Runtime ({e}); "
                "pip install onnxruntime-extensions"
            ) from e
        except Exception as e:  # onnxruntime raises its own exception types without a common base
            raise PardExportError(f"ONNX Runtime cannot load the exported {file}: {str(e).splitlines()[0]}") from e


def _compile_tensorrt(
    staging: Path, specs: dict[str, GraphSpec], pair: _Pair, k: int, dtype: str, sizes: dict, timing_cache
) -> dict[str, str]:
    """<role>.plan for each exported graph (the ONNX files are removed: the plans hold the weights)."""
    from .tensorrt_build import TrtBuildSettings, compile_plans

    settings = TrtBuildSettings(
        dtype=dtype,
        k=k,
        **sizes,
        max_seq_len=pair.max_seq_len,
        timing_cache=Path(timing_cache) if timing_cache else None,
    )
    return compile_plans(staging, specs, settings)


def _manifest(
    pair: _Pair,
    specs: dict[str, GraphSpec],
    staging: Path,
    k: int,
    dtype: str,
    backend: str,
    attention: str,
    plans: dict[str, str],
) -> Manifest:
    tokenizer = pair.target_tokenizer
    sources = {
        TARGET: (pair.target, pair.target_arch),
        DRAFT: (pair.draft, pair.draft_arch),
        DRAFT_AR: (pair.draft, pair.draft_arch),
    }
    models = {role: _model_entry(*sources[role], spec) for role, spec in specs.items()}
    models = {role: replace(entry, file=plans.get(role, entry.file)) for role, entry in models.items()}
    return Manifest(
        k=k,
        mask_token_id=pair.mask_id,
        vocab_size=pair.vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=pair.eos_ids,
        max_seq_len=pair.max_seq_len,
        dtype=dtype,
        backend=backend,
        attention=attention,
        models=models,
        files=hash_files(staging),
        tools=_tool_versions(),
    )


def _model_entry(source: ModelSource, arch: ArchSpec, io: GraphSpec) -> ModelEntry:
    return ModelEntry(
        source=source.spec,
        revision=source.revision,
        file=graph_file(io.role),
        architecture=arch.model_type,
        layers=arch.layers,
        kv_heads=arch.kv_heads,
        head_dim=arch.head_dim,
        vocab_rows=arch.vocab_rows,
        io=io,
    )


def _eos_ids(source: ModelSource, tokenizer) -> tuple[int, ...]:
    ids = set()
    generation = source.load_generation_config()
    if generation is not None and generation.eos_token_id is not None:
        eos = generation.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


def _tool_versions() -> dict[str, str]:
    versions = {"pard-export": __version__, "python": sys.version.split()[0]}
    for tool in _TOOLS:
        try:
            versions[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _short_name(target: str) -> str:
    name = target.rstrip("/").split("/")[-1].removesuffix(".gguf").split("@")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).lower() or "model"


def _attention_for(backend: str, attention: str | None) -> str:
    """The graphs' flavour: inplace for ONNX Runtime unless asked (faster than plain on CPU, and lossless with int8
    activations: export/quantize.py); TensorRT runs the PardAttention flavour only
    (plugins/pard_attention/tensorrt_plugin.py)."""
    if attention is None:
        return PLUGIN if backend == "tensorrt" else INPLACE
    _check_choice("attention", attention, ATTENTIONS)
    if backend == "tensorrt" and attention != PLUGIN:
        raise PardExportError(
            "the tensorrt backend builds plugin-attention graphs only; pass --attention plugin or leave it out"
        )
    return attention


def _kernel_for(backend: str, attention: str, dtype: str, kernel: str | None) -> str:
    """The inplace flavour's attention kernel (contract.py): native where it applies and this host can compile it
    (auto, the default), else onnx; an explicit native that cannot be had is an error."""
    applies = backend == "onnxruntime" and attention == INPLACE and dtype == "float32"
    if kernel not in (None, AUTO_KERNEL):
        _check_choice("attention-kernel", kernel, (AUTO_KERNEL, *ATTENTION_KERNELS))
    if kernel == ONNX_KERNEL or (kernel != NATIVE_KERNEL and not applies):
        return ONNX_KERNEL
    if not applies:
        raise PardExportError(
            "--attention-kernel native runs float32 inplace graphs on ONNX Runtime's CPU provider only; "
            "use --attention inplace --dtype float32 (onnxruntime backend), or --attention-kernel onnx"
        )
    missing = native_build.missing()
    if missing and kernel == NATIVE_KERNEL:
        raise PardExportError(f"--attention-kernel native cannot be compiled here: {missing}")
    if missing:
        print(f"note: the onnx attention kernel, not the native one: {missing}", file=sys.stderr)
        return ONNX_KERNEL
    return NATIVE_KERNEL


def _compile_native_kernel(staging: Path) -> None:
    try:
        native_build.compile_library(staging / NATIVE_KERNEL_LIBRARY)
    except native_build.CompileError as e:
        raise PardExportError(f"{e}; or build with --attention-kernel onnx") from e


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PardExportError(f"--{flag} {value!r} is not one of {', '.join(choices)}")


@contextmanager
def _stages(enabled: bool):
    from tqdm import tqdm

    # disable=None: no bar unless stderr is a terminal; leave=False: an error ends up alone on its line
    bar_off = None if enabled else True
    with tqdm(total=len(_STAGES), desc="build", unit="stage", disable=bar_off, leave=False, file=sys.stderr) as bar:
        started = []

        def stage(name: str, detail: str | None = None) -> None:
            """Start stage `name`, or (the same name again) show a detail of it, e.g. the layer being written."""
            if not started or started[-1] != name:
                if started:
                    bar.update(1)
                started.append(name)
            bar.set_postfix_str(f"{name}: {detail}" if detail else name)

        yield stage
        bar.update(1)
