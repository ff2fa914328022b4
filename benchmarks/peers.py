"""pard-export against ONNX Runtime GenAI on the same model and weights, interleaved in one process.

Setup, once. onnxruntime-genai 0.18 requires onnxruntime>=1.31, which the project's .venv (1.32) satisfies, so it
installs into .venv without replacing anything; its model builder also needs torch, transformers, onnx and gguf
(the `export` extra, which `make` installs) and the plot matplotlib (`bench`):

    .venv/bin/pip install -e '.[peers]'
    # where pip would replace onnxruntime instead (older than 1.31, or onnxruntime-gpu: onnxruntime-genai pulls the
    # CPU package), give it a venv of its own (torch first, as the Makefile does):
    #   python3 -m venv .venv-peers && .venv-peers/bin/pip install -e '.[export,bench,peers]'
    .venv/bin/pard-export build --target smollm2-135m --k 3 --with-ar-draft   # -> engines/smollm2-135m-k3-onnxruntime

Run (the first run also builds the ORT-GenAI models into engines/peers/, ~10 s per precision):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/peers.py --engine fp32=engines/smollm2-135m-k3-onnxruntime \\
        --json docs/peers-smollm2.json --plot docs/peers-smollm2.png
    # add an int4 engine with --engine int4=DIR; quick check: --workloads chat --prompts 2 --max-new-tokens 16
    # the ORT-GenAI models are reused from --work (engines/peers/); delete a folder there to rebuild it

The label of --engine is the precision: ORT-GenAI's model builder makes the model of that precision (-p LABEL
-e cpu) from the GGUF file the engine's target was built from. The builder reads float GGUF tensors only, so the
GGUF (SmolLM2's is Q4_1) is first dequantized to float32, the same values pard-export's build loads through
transformers; the builder gets the Hugging Face config.json (from the GGUF metadata, via transformers) and the
engine's tokenizer files as its -m folder. int4 pins the builder's CPU defaults (block_size=32, accuracy_level=4:
int8 activations; embeddings and lm_head quantized too).

Systems per precision: ORT-GenAI greedy (its Generator loop), pard-export `ar` (target only) and `pard`. Every
system gets the same prompt token ids (the engine's tokenizer and chat template). Workloads: `chat`, the prompts of
benchmarks/prompts.jsonl x 128 new tokens; `long`, documents of ~200, ~1.5k and ~5k tokens from Python's own
reference (benchmarks/long_docs.py) followed by a request to summarize them x 96 new tokens. Each system runs one
warm-up prompt per workload, then every prompt runs on every system, the order rotated from prompt to prompt.

Decode tokens/s excludes prefill for all systems: pard-export's stats count the tokens after its first step over
the time after it; ORT-GenAI's, the tokens after the first generated one over the time from that token to the
last. Both libraries get --threads intra-op threads (default: every core this process may use); pard-export stops
its threads' spinning after each run (it alternates two sessions), ORT-GenAI keeps its default. Also reported:
greedy agreement of pard-export ar with ORT-GenAI at the same precision (common-prefix tokens / tokens; identical
prompts), pard's tokens per target forward (tau) and whether pard reproduced ar, and the long-context slowdown
(tok/s at the longest documents / at the shortest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks.long_docs` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.long_docs import SUMMARY_QUESTION, document_prompt, long_documents
from pard_export.bench import DEFAULT_PROMPTS, load_prompts, machine_info
from pard_export.errors import PardExportError
from pard_export.files import staging_dir
from pard_export.manifest import TOKENIZER_DIR, read_manifest
from pard_export.runtime import Session

WORKLOADS = ("chat", "long")
DEFAULT_NEW_TOKENS = {"chat": 128, "long": 96}
DEFAULT_DOC_TOKENS = (200, 1500, 5000)
BUILDER_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
BUILDER_OPTIONS = {"int4": ["block_size=32", "accuracy_level=4"], "int8": ["block_size=32", "accuracy_level=4"]}
ORT_GENAI, AR, PARD = "ort-genai", "ar", "pard"
KINDS = (ORT_GENAI, AR, PARD)
WARMUP_TOKENS = 16


@dataclass(frozen=True)
class Prompt:
    workload: str
    name: str
    ids: list[int]
    max_new_tokens: int
    doc_budget: int | None = None  # long workload: the tokens asked of the document
    doc_tokens: int | None = None  # and those it has


@dataclass(frozen=True)
class Output:
    token_ids: list[int]
    tokens_per_second: float  # prefill excluded
    ttft_ms: float
    target_forwards: int


@dataclass(frozen=True)
class Run:
    system: str
    prompt: str
    output: Output


# --- ORT-GenAI models from the engine's GGUF ------------------------------------------------------------------


def ort_genai_models(engine: Path, precisions: Sequence[str], work: Path, gguf: Path | None = None) -> dict[str, Path]:
    """ORT-GenAI model folders, one per precision, built from the GGUF of the engine's target unless already in
    `work`."""
    models = {p: work / f"ort-genai-{p}" for p in precisions}
    missing = [p for p, folder in models.items() if not (folder / "genai_config.json").is_file()]
    if missing:
        source = _gguf_source(engine, gguf)
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".peers-", dir=work) as scratch:
            float_gguf = dequantized_gguf(Path(source.location) / source.gguf_file, Path(scratch) / "model-f32.gguf")
            config = builder_config_dir(source, engine, Path(scratch) / "config")
            for precision in missing:
                run_model_builder(float_gguf, config, precision, models[precision], Path(scratch) / "cache")
    return models


def _gguf_source(engine: Path, gguf: Path | None):
    from pard_export.export.sources import resolve  # imports torch: only when a model is built

    source = resolve(str(gguf) if gguf else read_manifest(engine).models["target"].source)
    if not source.gguf_file:
        raise PardExportError(
            f"{engine}'s target ({source.spec}) is not a GGUF file; pass --gguf FILE of the same weights"
        )
    return source


def dequantized_gguf(source: Path, out: Path) -> Path:
    """A copy of `source` with every tensor dequantized to float32: ORT-GenAI's GGUF loader reads float tensors only.
    Metadata is not copied: the builder takes the config from its -m folder."""
    import numpy as np
    from gguf import GGUFReader, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(source)
    writer = GGUFWriter(out, reader.fields["general.architecture"].contents())
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, dequantize(tensor.data, tensor.tensor_type).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def builder_config_dir(source, engine: Path, out: Path) -> Path:
    """The builder's -m folder: config.json from the GGUF metadata (with the `architectures` entry the builder
    dispatches on, which GGUF configs lack) and the engine's tokenizer files, so nothing is fetched."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = source.load_config()
    config.architectures = config.architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    config.save_pretrained(out)
    for file in (engine / TOKENIZER_DIR).iterdir():
        shutil.copy(file, out / file.name)
    return out


def run_model_builder(gguf: Path, config_dir: Path, precision: str, out: Path, cache: Path) -> None:
    """`python -m onnxruntime_genai.models.builder` for the CPU at one precision, offline; its log beside `out`."""
    log = out.with_name(f"{out.name}.build.log")
    with staging_dir(out) as staging, log.open("w") as log_file:
        command = builder_command(gguf, config_dir, precision, staging, cache)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        print(f"building the ORT-GenAI {precision} model: {out} (log: {log})", file=sys.stderr, flush=True)
        if subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=env).returncode != 0:
            raise PardExportError(f"the ORT-GenAI model builder failed for {precision}; see {log}")


def builder_command(gguf: Path, config_dir: Path, precision: str, out: Path, cache: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(gguf),
        "-m",
        str(config_dir),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(cache),
    ]
    return command + ["--extra_options", "hf_token=false", *BUILDER_OPTIONS.get(precision, [])]


# --- the systems ------------------------------------------------------------------------------------------------


class OrtGenAISystem:
    """ORT-GenAI's own greedy loop: GeneratorParams(max_length) -> Generator -> append_tokens -> generate_next_token."""

    kind = ORT_GENAI

    def __init__(self, precision: str, model_dir: Path, threads: int):
        import onnxruntime_genai as og

        self.name = f"{precision}/{self.kind}"
        self._og = og
        config = og.Config(str(model_dir))
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Output:
        start = time.perf_counter()
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=len(prompt_ids) + max_new_tokens)
        generator = self._og.Generator(self.model, params)
        generator.append_tokens(prompt_ids)
        tokens, first = [], None
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return Output(tokens, decode_rate(len(tokens), start, first, end), 1e3 * (first - start), len(tokens))


class PardExportSystem:
    """pard_export.runtime.Session in one mode (ar: the target alone; pard: draft + verify)."""

    def __init__(self, precision: str, session: Session, mode: str):
        self.kind = mode
        self.name = f"{precision}/{mode}"
        self.session = session

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Output:
        result = self.session.generate(prompt_ids, max_new_tokens=max_new_tokens, mode=self.kind)
        stats = result.stats
        return Output(list(result.token_ids), stats.tokens_per_second, stats.ttft_ms, stats.target_forwards)


def decode_rate(tokens: int, start: float, first: float, end: float) -> float:
    """Tokens after the first over the time after it, as pard-export's stats count (all tokens / all time when
    only one came)."""
    if tokens > 1 and end > first:
        return (tokens - 1) / (end - first)
    return tokens / (end - start)


# --- prompts and the interleaved runs ---------------------------------------------------------------------------


def chat_prompts(session: Session, count: int | None, max_new_tokens: int) -> list[Prompt]:
    items = load_prompts(DEFAULT_PROMPTS)[:count]
    return [
        Prompt("chat", f"chat-{i:02d}", session.codec.encode_chat(item["prompt"]), max_new_tokens)
        for i, item in enumerate(items)
    ]


def long_prompts(session: Session, doc_tokens: Sequence[int], per_size: int, max_new_tokens: int) -> list[Prompt]:
    tokenizer = session.codec.tokenizer
    documents = long_documents(doc_tokens, per_size, lambda text: len(tokenizer.encode(text, add_special_tokens=False)))
    return [
        Prompt("long", d.name, session.codec.encode_chat(document_prompt(d)), max_new_tokens, d.budget, d.tokens)
        for d in documents
    ]


def rotated(items: Sequence, shift: int) -> list:
    """`items` starting at position shift (mod len): prompt i runs the systems in this order."""
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def measure(systems: Sequence, prompts: Sequence[Prompt], progress: bool = True) -> list[Run]:
    """One warm-up run per system, then each prompt on every system, the order rotated per prompt."""
    from tqdm import tqdm

    for system in systems:
        system.generate(prompts[0].ids, min(WARMUP_TOKENS, prompts[0].max_new_tokens))
    runs = []
    with tqdm(
        total=len(prompts) * len(systems),
        desc=prompts[0].workload,
        unit="run",
        leave=False,
        file=sys.stderr,
        disable=None if progress else True,
    ) as bar:
        for index, prompt in enumerate(prompts):
            for system in rotated(systems, index):
                runs.append(Run(system.name, prompt.name, system.generate(prompt.ids, prompt.max_new_tokens)))
                bar.update(1)
    return runs


# --- summaries --------------------------------------------------------------------------------------------------


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def agreement(runs: Sequence[Run], system: str, reference: str) -> dict:
    """How far `system`'s greedy tokens follow `reference`'s, prompt by prompt."""
    tokens = _tokens_by_prompt(runs)
    pairs = [(t[system], t[reference]) for t in tokens.values() if system in t and reference in t]
    prefix = sum(common_prefix(a, b) for a, b in pairs)
    length = sum(max(len(a), len(b)) for a, b in pairs)
    return {
        "identical": sum(a == b for a, b in pairs),
        "prompts": len(pairs),
        "common_prefix_fraction": prefix / length if length else 1.0,
    }


def _tokens_by_prompt(runs: Sequence[Run]) -> dict[str, dict[str, list[int]]]:
    tokens: dict[str, dict[str, list[int]]] = {}
    for run in runs:
        tokens.setdefault(run.prompt, {})[run.system] = run.output.token_ids
    return tokens


def system_summary(runs: Sequence[Run]) -> dict:
    outputs = [r.output for r in runs]
    new_tokens = sum(len(o.token_ids) for o in outputs)
    return {
        "tokens_per_second": statistics.median(o.tokens_per_second for o in outputs),
        "ttft_ms": statistics.median(o.ttft_ms for o in outputs),
        "tokens_per_target_forward": new_tokens / max(sum(o.target_forwards for o in outputs), 1),
        "new_tokens": new_tokens,
        "runs": len(outputs),
    }


def ratios(systems: dict, precision: str) -> dict:
    rate = {kind: systems[f"{precision}/{kind}"]["tokens_per_second"] for kind in KINDS}
    return {
        "ar_vs_ort_genai": rate[AR] / rate[ORT_GENAI],
        "pard_vs_ort_genai": rate[PARD] / rate[ORT_GENAI],
        "pard_vs_ar": rate[PARD] / rate[AR],
    }


def workload_summary(
    runs: Sequence[Run], prompts: Sequence[Prompt], system_names: Sequence[str], precisions: Sequence[str]
) -> dict:
    systems = {name: system_summary([r for r in runs if r.system == name]) for name in system_names}
    summary = {
        "prompts": len(prompts),
        "max_new_tokens": prompts[0].max_new_tokens,
        "prompt_tokens": {p.name: len(p.ids) for p in prompts},
        "systems": systems,
        "ratios": {p: ratios(systems, p) for p in precisions},
        "agreement": {
            p: {
                "ar_vs_ort_genai": agreement(runs, f"{p}/{AR}", f"{p}/{ORT_GENAI}"),
                "pard_vs_ar": agreement(runs, f"{p}/{PARD}", f"{p}/{AR}"),
            }
            for p in precisions
        },
    }
    if prompts[0].doc_budget is not None:
        summary["question"] = SUMMARY_QUESTION
        summary.update(by_document_length(runs, prompts, system_names))
    return summary


def by_document_length(runs: Sequence[Run], prompts: Sequence[Prompt], system_names: Sequence[str]) -> dict:
    """Median tok/s per system per document budget, and each system's rate at the longest over the shortest."""
    budget_of = {p.name: p.doc_budget for p in prompts}
    budgets = sorted(set(budget_of.values()))
    rates = {
        str(b): {
            name: statistics.median(
                r.output.tokens_per_second for r in runs if r.system == name and budget_of[r.prompt] == b
            )
            for name in system_names
        }
        for b in budgets
    }
    longest, shortest = rates[str(budgets[-1])], rates[str(budgets[0])]
    return {
        "document_tokens": {p.name: p.doc_tokens for p in prompts},
        "tokens_per_second_by_budget": rates,
        "longest_vs_shortest": {name: longest[name] / shortest[name] for name in system_names},
    }


# --- output -----------------------------------------------------------------------------------------------------


def format_summary(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"{machine['cpu']}, {report['threads']} threads, onnxruntime {machine['onnxruntime']}, onnxruntime-genai "
        f"{report['ort_genai']['version']}; medians over prompts, decode tok/s (prefill excluded)"
    ]
    for workload, w in report["workloads"].items():
        lines += [
            "",
            f"{workload}: {w['prompts']} prompts x {w['max_new_tokens']} new tokens, prompts of "
            f"{min(w['prompt_tokens'].values())}-{max(w['prompt_tokens'].values())} tokens",
            f"{'system':16} {'tok/s':>8} {'ttft ms':>9} {'tau':>6} {'new tokens':>11}",
        ]
        for name, s in w["systems"].items():
            lines.append(
                f"{name:16} {s['tokens_per_second']:8.1f} {s['ttft_ms']:9.1f} "
                f"{s['tokens_per_target_forward']:6.2f} {s['new_tokens']:11d}"
            )
        for precision, r in w["ratios"].items():
            a = w["agreement"][precision]
            lines.append(
                f"{precision}: ar/ort-genai {r['ar_vs_ort_genai']:.2f}  pard/ort-genai "
                f"{r['pard_vs_ort_genai']:.2f}  pard/ar {r['pard_vs_ar']:.2f} | greedy ar = ort-genai on "
                f"{_agreed(a['ar_vs_ort_genai'])}; pard = ar on {_agreed(a['pard_vs_ar'])}"
            )
        if "tokens_per_second_by_budget" in w:
            lines += _by_budget_lines(w)
    return "\n".join(lines)


def _agreed(a: dict) -> str:
    return f"{a['identical']}/{a['prompts']} prompts ({100 * a['common_prefix_fraction']:.1f}% common prefix)"


def _by_budget_lines(w: dict) -> list[str]:
    budgets = list(w["tokens_per_second_by_budget"])
    lines = [
        "tok/s by document budget (tokens), and the longest's over the shortest's:",
        f"{'system':16} " + " ".join(f"{b:>8}" for b in budgets) + f" {budgets[-1] + '/' + budgets[0]:>11}",
    ]
    for name, slowdown in w["longest_vs_shortest"].items():
        rates = " ".join(f"{w['tokens_per_second_by_budget'][b][name]:8.1f}" for b in budgets)
        lines.append(f"{name:16} {rates} {slowdown:11.2f}")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions, workloads = report["precisions"], list(report["workloads"])
    fig, axes = plt.subplots(
        len(precisions), len(workloads), figsize=(5.5 * len(workloads), 4 * len(precisions)), squeeze=False
    )
    colors = {ORT_GENAI: "#4488aa", AR: "#888888", PARD: "#dd6622"}
    for row, precision in enumerate(precisions):
        for col, workload in enumerate(workloads):
            ax, w = axes[row][col], report["workloads"][workload]
            groups = w.get("tokens_per_second_by_budget") or {
                "all prompts": {n: s["tokens_per_second"] for n, s in w["systems"].items()}
            }
            width = 0.8 / len(KINDS)
            for i, kind in enumerate(KINDS):
                xs = [g + (i - 1) * width for g in range(len(groups))]
                ax.bar(
                    xs,
                    [rates[f"{precision}/{kind}"] for rates in groups.values()],
                    width,
                    label=kind,
                    color=colors[kind],
                )
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([f"~{g} tokens" if g.isdigit() else g for g in groups])
            ax.set_ylabel("decode tokens / s")
            ax.set_title(f"{workload}, {precision}: {w['prompts']} prompts x {w['max_new_tokens']} tokens")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------------------------


def parse_engines(values: Sequence[str]) -> dict[str, Path]:
    engines = {}
    for value in values:
        label, sep, directory = value.partition("=")
        if not sep or label not in BUILDER_PRECISIONS:
            raise PardExportError(
                f"--engine wants PRECISION=DIR with PRECISION one of {', '.join(BUILDER_PRECISIONS)}"
                f" (the ORT-GenAI model of that precision is matched to it), got {value!r}"
            )
        if label in engines:
            raise PardExportError(f"--engine {label}= given twice")
        engines[label] = Path(directory)
    return engines


def parse_workloads(value: str) -> list[str]:
    workloads = value.split(",")
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        raise PardExportError(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    return workloads


def check_same_target(engines: dict[str, Path]) -> None:
    """ORT-GenAI's models come from one GGUF: every engine must have been built from that target."""
    sources = {label: read_manifest(engine).models["target"].source for label, engine in engines.items()}
    if len(set(sources.values())) > 1:
        raise PardExportError(f"the engines have different targets ({sources}); compare engines of one target")


def run(
    engines: dict[str, Path],
    workloads: Sequence[str],
    work: Path,
    threads: int,
    prompts: int | None,
    max_new_tokens: int | None,
    doc_tokens: Sequence[int],
    docs_per_size: int,
    gguf: Path | None,
) -> dict:
    check_same_target(engines)
    precisions = list(engines)
    models = ort_genai_models(next(iter(engines.values())), precisions, work, gguf)
    sessions = {p: Session(engine, threads=threads) for p, engine in engines.items()}
    try:
        systems = [
            system
            for p in precisions
            for system in (
                OrtGenAISystem(p, models[p], threads),
                PardExportSystem(p, sessions[p], AR),
                PardExportSystem(p, sessions[p], PARD),
            )
        ]
        names = [s.name for s in systems]
        first = sessions[precisions[0]]  # tokenizes for every system: same target, same tokenizer
        report_workloads, all_runs = {}, []
        for workload in workloads:
            new_tokens = max_new_tokens or DEFAULT_NEW_TOKENS[workload]
            items = (
                chat_prompts(first, prompts, new_tokens)
                if workload == "chat"
                else long_prompts(first, doc_tokens, docs_per_size, new_tokens)
            )
            runs = measure(systems, items)
            report_workloads[workload] = workload_summary(runs, items, names, precisions)
            all_runs += [
                {
                    "workload": workload,
                    "system": r.system,
                    "prompt": r.prompt,
                    **{k: v for k, v in asdict(r.output).items() if k != "token_ids"},
                    "new_tokens": len(r.output.token_ids),
                }
                for r in runs
            ]
            print(f"{workload}: done", file=sys.stderr, flush=True)
        machine = machine_info(first)
    finally:
        for session in sessions.values():
            session.close()
    import onnxruntime_genai

    return {
        "precisions": precisions,
        "engines": {p: str(e) for p, e in engines.items()},
        "ort_genai": {
            "version": onnxruntime_genai.__version__,
            "models": {p: str(m) for p, m in models.items()},
            "builder_options": {p: ["-p", p, "-e", "cpu", *BUILDER_OPTIONS.get(p, [])] for p in precisions},
        },
        "threads": threads,
        "machine": machine,
        "workloads": report_workloads,
        "runs": all_runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine",
        action="append",
        required=True,
        metavar="PRECISION=DIR",
        help="a pard-export engine and its precision label (fp32, int4, ...); repeatable",
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--prompts", type=int, help="only the first N chat prompts")
    parser.add_argument("--max-new-tokens", type=int, help="for every workload (default: chat 128, long 96)")
    parser.add_argument("--doc-tokens", default=",".join(map(str, DEFAULT_DOC_TOKENS)))
    parser.add_argument("--docs-per-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--work", type=Path, default=Path("engines/peers"), help="where the ORT-GenAI models live")
    parser.add_argument("--gguf", type=Path, help="the GGUF to build ORT-GenAI from (default: the engine's target)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    try:
        report = run(
            parse_engines(args.engine),
            parse_workloads(args.workloads),
            args.work,
            args.threads,
            args.prompts,
            args.max_new_tokens,
            [int(n) for n in args.doc_tokens.split(",")],
            args.docs_per_size,
            args.gguf,
        )
    except PardExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
