"""`pard-export`: each subcommand calls one public function; flags are named like its parameters.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .contract import ATTENTION_KERNELS, ATTENTIONS, BACKENDS, DTYPES, MODES, NO_QUANTIZATION, QUANTIZE_SCHEMES
from .errors import PardExportError

EXIT_BAD_INPUT = 2
_TENSORRT_ONLY = ("max_batch", "prefill_chunk", "opt_batch", "timing_cache")  # build settings of that backend only


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage block is not one line
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return int(e.code or 0)
    try:
        return args.run(args)
    except PardExportError as e:
        print(f"pard-export {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pard-export", description="PARD speculative decoding: export, run, serve.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    build = commands.add_parser("build", help="export draft + target to an engine directory")
    build.add_argument("--target", required=True, help="preset, Hugging Face id, local directory or .gguf file")
    build.add_argument(
        "--k",
        type=_k_value,
        default=8,
        help="drafts per step: fixed mask slots in the draft graph (1..32), or auto: calibrate k = 1..16 "
        "on this machine and keep the fastest (onnxruntime)",
    )
    build.add_argument("--calibration", help="--k auto: JSON lines of prompts to calibrate on (default: bundled)")
    build.add_argument("--draft", help="the PARD draft (default: the preset's)")
    build.add_argument("--out", help="engine directory (default engines/<target>-k<K>-<backend>)")
    build.add_argument("--backend", default="onnxruntime", choices=BACKENDS, help="onnxruntime (default) or tensorrt")
    build.add_argument("--dtype", default="float32", choices=DTYPES, help="float32 (default), float16 or bfloat16")
    build.add_argument("--max-seq-len", type=int, help="longest prompt + generation the engine serves")
    build.add_argument("--mask-token-id", type=int, help="override the draft config's pard_token")
    build.add_argument("--force", action="store_true", help="replace a non-empty --out")
    build.add_argument(
        "--with-ar-draft", action="store_true", help="also export the draft as a plain AR graph (ar-draft baseline)"
    )
    build.add_argument(
        "--attention",
        choices=ATTENTIONS,
        help="inplace (onnxruntime default: KV buffers bound in place, TensorScatter), plain "
        "(concatenated KV) or plugin (PardAttention nodes over preallocated KV buffers; the "
        "tensorrt default and only choice)",
    )
    build.add_argument(
        "--attention-kernel",
        choices=("auto", *ATTENTION_KERNELS),
        help="inplace graphs: native (one compiled CPU op per layer, plugins/cached_attention; needs g++ and "
        "ONNX Runtime's headers, which make install fetches), onnx (standard ops) or auto (default: native where "
        "it compiles, float32 only)",
    )
    build.add_argument("--max-batch", type=int, help="tensorrt: largest batch the plans serve (default 8)")
    build.add_argument(
        "--prefill-chunk", type=int, help="tensorrt: most tokens per call, i.e. the prefill chunk (default 512)"
    )
    build.add_argument(
        "--opt-batch", type=int, help="tensorrt: the batch its kernels and plugin tactics are tuned for (default 1)"
    )
    build.add_argument("--timing-cache", help="tensorrt: TensorRT timing cache file, read if present and updated")
    build.add_argument(
        "--quantize",
        choices=QUANTIZE_SCHEMES,
        help="int4 or int8: weight-only quantization (MatMulNBits; onnxruntime backend)",
    )
    build.add_argument(
        "--draft-quantize",
        choices=(*QUANTIZE_SCHEMES, NO_QUANTIZATION),
        help="int4, int8 or none (float) for the draft (default: as --quantize)",
    )
    build.add_argument("--keep-head-float", action="store_true", help="quantize all linear layers but the LM head")
    build.add_argument(
        "--quant-block-size",
        type=int,
        help="weights per quantization scale, along K: a power of two >= 16 (default 32)",
    )
    build.add_argument(
        "--quant-accuracy-level",
        type=int,
        help="MatMulNBits accuracy_level 0..4 (default 4: int8 activations, fast; 0: fp32 compute; "
        "4 needs --attention inplace, the default)",
    )
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(run=_run_build)

    generate = commands.add_parser("generate", help="generate with an engine directory")
    generate.add_argument("--engine", required=True, help="engine directory from pard-export build")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", type=_token_ids, help="prompt token ids, comma-separated")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy")
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0, help="0 = no limit")
    generate.add_argument("--seed", type=int, help="makes sampling reproducible")
    generate.add_argument(
        "--draft-sampling", action="store_true", help="sample drafts instead of taking the draft's argmax"
    )
    generate.add_argument(
        "--stop", action="append", default=[], help="stop string (repeatable); not part of the output"
    )
    generate.add_argument(
        "--mode",
        default="pard",
        choices=MODES,
        help="pard (default: drafts per step chosen from measurements), pard-fixed (k every step), "
        "ar (target only) or ar-draft (AR speculative)",
    )
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    generate.add_argument("--json", action="store_true", help="print one JSON object when done: token_ids, text, stats")
    generate.add_argument("--verify", action="store_true", help="check every file's sha256 against the manifest")
    generate.set_defaults(run=_run_generate)

    bench = commands.add_parser("bench", help="measure ar, pard and ar-draft side by side")
    bench.add_argument("--engine", required=True)
    bench.add_argument("--prompts", help='JSON lines with "prompt" or "prompt_ids" (default benchmarks/prompts.jsonl)')
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--modes", type=lambda text: [m for m in text.split(",") if m], help="e.g. ar,pard,ar-draft")
    bench.add_argument("--json", dest="json_out", help="write the report here")
    bench.add_argument("--plot", help="write a PNG: tokens/s per mode, per-position acceptance")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=_run_bench)

    calibrate = commands.add_parser("calibrate", help="measure what adaptive pard decides from, on this machine")
    calibrate.add_argument("--engine", required=True)
    calibrate.add_argument("--prompts", help="JSON lines whose draft acceptance seeds the estimates (default: bundled)")
    calibrate.add_argument("--threads", type=int, help="onnxruntime threads, as the Session that will use it")
    calibrate.set_defaults(run=_run_calibrate)

    distill = commands.add_parser("distill", help="training data: the target's own greedy answers to a prompt file")
    distill.add_argument("--engine", required=True, help="an engine directory holding the target")
    distill.add_argument("--prompts", required=True, help='JSON lines with a "prompt" field (user turns)')
    distill.add_argument("--out", required=True, help="JSON lines to append to (an interrupted run resumes)")
    distill.add_argument("--max-new-tokens", type=int, default=192)
    distill.add_argument("--batch", type=int, default=32, help="prompts decoded together")
    distill.add_argument("--quiet", action="store_true", help="no progress bar")
    distill.set_defaults(run=_run_distill)

    train = commands.add_parser("train", help="COD-train a PARD draft (pard-method.md §5)")
    train.add_argument("--config", help="TOML file of settings (flags override it)")
    _add_train_settings(train)
    train.add_argument("--resume", help="a checkpoint directory, or 'latest'")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_run_train)

    recipe = commands.add_parser("recipe", help="the engine's pair as a TensorRT-LLM or vLLM speculative config")
    recipe.add_argument("--engine", required=True)
    recipe.add_argument("--for", dest="serve_with", required=True, help="trtllm (trtllm-serve YAML) or vllm")
    recipe.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    recipe.add_argument("--out", help="config file (default: inside the engine directory)")
    recipe.set_defaults(run=_run_recipe)

    triton = commands.add_parser("triton", help="a Triton Inference Server model repository serving the engine")
    triton.add_argument("--engine", required=True)
    triton.add_argument("--out", required=True, help="the model repository to write (it gets the model `pard`)")
    triton.add_argument("--backend", help="refuse an engine built for another backend (default: the engine's)")
    triton.add_argument(
        "--copy-engine",
        action="store_true",
        help="copy the engine into the repository (default: refer to it by absolute path)",
    )
    triton.add_argument(
        "--max-tokens-limit",
        type=int,
        help="largest max_tokens a request may ask for (default: the engine's max_seq_len - 1)",
    )
    triton.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together at most")
    triton.add_argument("--instances", type=int, default=1, help="model instances (each owns a Session)")
    triton.add_argument("--kind", default="cpu", help="cpu (KIND_CPU) or gpu (KIND_GPU) instances")
    triton.add_argument("--threads", type=int, default=0, help="onnxruntime threads per instance (0: its default)")
    triton.add_argument(
        "--python-path",
        action="append",
        help="a site-packages folder the server's Python adds (repeatable; default: this interpreter's)",
    )
    triton.add_argument("--force", action="store_true", help="replace --out if it exists")
    triton.set_defaults(run=_run_triton)

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat) over the engine")
    serve.add_argument("--engine", required=True)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-name", help="the model id requests name (default: the engine directory's name)")
    serve.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")
    serve.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting for a place in the batch; more get HTTP 503"
    )
    serve.add_argument(
        "--max-tokens-limit",
        type=int,
        help="largest max_tokens a request may ask for (default: the engine's max_seq_len)",
    )
    serve.add_argument(
        "--kv-budget-mib",
        type=int,
        help="KV memory the running requests may reserve (each its prompt + max_tokens); default: --max-batch only",
    )
    serve.add_argument("--threads", type=int, help="onnxruntime threads (default: its own choice)")
    serve.set_defaults(run=_run_serve)

    demo = commands.add_parser("demo", help="offline SmolLM2 demo: build if missing, then generate")
    demo.add_argument("--engines", default="engines", help="where the demo engine lives (default engines/)")
    demo.add_argument("--max-new-tokens", type=int, default=64)
    demo.set_defaults(run=_run_demo)
    return parser


def _k_value(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of drafts or auto, got {text!r}") from None


def _token_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _run_build(args) -> int:
    from .export import build

    out = build(
        args.target,
        args.k,
        draft=args.draft,
        out=args.out,
        backend=args.backend,
        dtype=args.dtype,
        max_seq_len=args.max_seq_len,
        mask_token_id=args.mask_token_id,
        force=args.force,
        with_ar_draft=args.with_ar_draft,
        attention=args.attention,
        attention_kernel=args.attention_kernel,
        **_tensorrt_flags(args),
        calibration=args.calibration,
        quantize=args.quantize,
        draft_quantize=args.draft_quantize,
        keep_head_float=args.keep_head_float,
        **_given(quant_block_size=args.quant_block_size, quant_accuracy_level=args.quant_accuracy_level),
        progress=not args.quiet,
    )
    print(out)
    return 0


def _tensorrt_flags(args) -> dict:
    """The tensorrt-only flags that were given; refused for another backend rather than silently ignored."""
    given = _given(**{name: getattr(args, name) for name in _TENSORRT_ONLY})
    if given and args.backend != "tensorrt":
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise PardExportError(f"{flags} apply to --backend tensorrt only; drop them for a {args.backend} build")
    return given


def _given(**flags) -> dict:
    """The flags that were passed (argparse default None), so the API's defaults apply to the rest."""
    return {name: value for name, value in flags.items() if value is not None}


def _run_generate(args) -> int:
    from .runtime import Session

    prompt = args.prompt if args.prompt is not None else args.prompt_ids
    settings = dict(
        max_new_tokens=args.max_new_tokens,
        mode=args.mode,
        chat=args.chat,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        draft_sampling=args.draft_sampling,
        stop=args.stop,
    )
    with Session(args.engine, verify=args.verify) as session:
        if args.json:
            print(json.dumps(session.generate(prompt, **settings).to_dict()))
            return 0
        started = time.perf_counter()
        pieces = 0
        for piece in session.stream(prompt, **settings):
            print(piece, end="", flush=True)
            pieces += 1
    print()
    print(f"[{args.mode}] {pieces} pieces streamed in {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


def _run_calibrate(args) -> int:
    from .runtime import Session

    with Session(args.engine, threads=args.threads) as session:
        calibration = session.calibrate(force=True, prompts=args.prompts)
        where = session.calibration_file
    costs = calibration.costs
    print(f"measured in {calibration.seconds:.1f} s; kept in {where or 'memory only (nowhere writable)'}")
    print("acceptance by position (given the earlier ones): " + " ".join(f"{a:.2f}" for a in calibration.acceptance))
    for context, seconds in zip(costs.contexts, costs.seconds):
        steps = " ".join(f"{s / seconds[0]:.2f}" for s in seconds[1:])
        print(
            f"context {context:5d}: ar step {seconds[0] * 1e3:.2f} ms; "
            f"with n = 1..{len(seconds) - 1} drafts, in ar steps: {steps}"
        )
    return 0


def _run_bench(args) -> int:
    from .bench import bench, format_report

    report = bench(
        args.engine,
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        modes=args.modes,
        json_out=args.json_out,
        plot=args.plot,
        progress=not args.quiet,
    )
    print(format_report(report))
    return 0


def _run_distill(args) -> int:
    from .train.distill import distill

    if args.batch < 1 or args.max_new_tokens < 1:
        raise PardExportError("--batch and --max-new-tokens must be at least 1")
    written = distill(
        args.engine,
        args.prompts,
        args.out,
        max_new_tokens=args.max_new_tokens,
        batch=args.batch,
        progress=not args.quiet,
    )
    print(f"{written} answer tokens appended to {args.out}")
    return 0


def _add_train_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--draft-vocab for draft_vocab), its help from the field's metadata. Every
    flag defaults to None, so a setting not given on the command line comes from the TOML file or the default."""
    import dataclasses
    import typing

    from .train.config import TrainConfig, flag

    types, defaults = typing.get_type_hints(TrainConfig), TrainConfig()
    for setting in dataclasses.fields(TrainConfig):
        text = setting.metadata["help"] + _default_text(getattr(defaults, setting.name))
        parser.add_argument(flag(setting.name), help=text.replace("%", "%%"), **_flag_reading(types[setting.name]))


def _default_text(value) -> str:
    if value in ("", None):
        return ""
    return f"; default {','.join(map(str, value)) if isinstance(value, list) else value}"


def _flag_reading(kind) -> dict:
    """How argparse reads a setting of this type: bool as --x / --no-x, list[int] comma-separated."""
    import typing

    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind == list[int]:
        return {"type": _token_ids}
    plain = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]  # int | None reads as int
    if len(plain) != 1 or plain[0] not in (str, int, float):
        raise TypeError(f"no flag reading for a setting of type {kind}")
    return {"type": plain[0]}


def _run_train(args) -> int:
    import dataclasses

    from .train.config import TrainConfig, load_config
    from .train.trainer import train

    given = {setting.name: getattr(args, setting.name) for setting in dataclasses.fields(TrainConfig)}
    config = load_config(args.config, given)
    print(train(config, resume=args.resume, progress=not args.quiet))
    return 0


def _run_recipe(args) -> int:
    from .recipes import recipe

    made = recipe(args.engine, args.serve_with, tp=args.tp, out=args.out)
    print(f"wrote {made.path}\nserve with: {made.command}")
    return 0


def _run_triton(args) -> int:
    from .triton_repo import write_repository

    model_dir = write_repository(
        args.engine,
        args.out,
        backend=args.backend,
        copy_engine=args.copy_engine,
        max_tokens_limit=args.max_tokens_limit,
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        kind=args.kind,
        threads=args.threads,
        python_path=args.python_path,
        force=args.force,
    )
    print(
        f"wrote {model_dir} (config.pbtxt validated); serve it with: tritonserver --model-repository={args.out}\n"
        f"or on this machine: python -m pard_export.triton_repo.server --repo {args.out}"
    )
    return 0


def _run_serve(args) -> int:
    from .serve import serve

    serve(
        args.engine,
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        kv_budget_mib=args.kv_budget_mib,
        threads=args.threads,
    )
    return 0


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.engines, max_new_tokens=args.max_new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
