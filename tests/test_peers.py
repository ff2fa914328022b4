"""benchmarks/peers.py and benchmarks/long_docs.py: the parts that need no model (documents, interleaving, summaries).

Neither onnxruntime-genai nor an engine is needed: the systems here are fakes that return fixed tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from benchmarks import peers
from benchmarks.long_docs import build_document, is_prose, long_documents, prose_paragraphs
from pard_export.errors import PardExportError

TOKENIZER = Path(__file__).resolve().parents[1] / "drafts" / "smollm2-135m-pard" / "tokenizer.json"  # SmolLM2's


@pytest.fixture(scope="module")
def count_tokens():
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_documents_hit_their_budgets(count_tokens):
    documents = long_documents([200, 1500, 5000], 2, count_tokens)
    assert [d.name for d in documents] == ["doc200-0", "doc200-1", "doc1500-0", "doc1500-1", "doc5000-0", "doc5000-1"]
    for d in documents:
        assert d.tokens == count_tokens(d.text)
        assert d.budget - 64 <= d.tokens <= d.budget, d.name  # short by less than a sentence
        assert d.text.endswith((".", "!", "?")), d.name  # cut at a sentence boundary
    assert documents[0].text != documents[1].text
    assert documents[4].text.startswith(documents[2].text.rsplit("\n\n", 1)[0])  # longer extends shorter
    assert long_documents([200], 1, count_tokens)[0].text == documents[0].text  # deterministic


def test_only_prose_paragraphs():
    assert is_prose("An assignment statement evaluates the expression list and assigns\nthe single resulting object.")
    assert not is_prose("Assignment statements\n*********************")  # heading
    assert not is_prose('   assignment_stmt ::= (target_list "=")+ (starred_expression | yield_expression)')
    assert not is_prose("   def f(x):\n       return x + 1 if x is not None else the default value.")  # code
    assert not is_prose(">>> print(1)  # prints one followed by a newline and nothing more at all.")
    paragraphs = prose_paragraphs()
    assert len(paragraphs) > 500 and all("\n" not in p for p in paragraphs)


def test_document_cut_at_sentences():
    words = lambda text: len(text.split())  # noqa: E731
    paragraphs = ["One two three.", "Four five. Six seven. Eight nine.", "Ten eleven."]
    assert build_document(paragraphs, 7, words) == "One two three.\n\nFour five. Six seven."
    assert build_document(paragraphs, 3, words, start=2) == "Ten eleven."  # no sentence of the next fits
    assert build_document(paragraphs, 100, words) == "\n\n".join(paragraphs)  # stops after one round
    with pytest.raises(ValueError):
        build_document([], 10, words)


def test_rotated_runs_each_system_once_and_first_in_turn():
    systems = ["a", "b", "c"]
    orders = [peers.rotated(systems, i) for i in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


class FakeSystem:
    def __init__(self, name: str, tokens: list[int], rate: float, log: list):
        self.name, self.tokens, self.rate, self.log = name, tokens, rate, log

    def generate(self, prompt_ids, max_new_tokens):
        self.log.append((self.name, tuple(prompt_ids), max_new_tokens))
        return peers.Output(self.tokens[:max_new_tokens], self.rate, 10.0, len(self.tokens[:max_new_tokens]))


def test_measure_warms_up_then_interleaves():
    log = []
    systems = [FakeSystem(n, [1, 2, 3], 1.0, log) for n in ("x", "y")]
    prompts = [peers.Prompt("chat", f"p{i}", [i], 3) for i in range(3)]
    runs = peers.measure(systems, prompts, progress=False)
    assert log[:2] == [("x", (0,), 3), ("y", (0,), 3)]  # warm-up: first prompt, min(16, 3) tokens
    assert [(name, ids) for name, ids, _ in log[2:]] == [
        ("x", (0,)),
        ("y", (0,)),
        ("y", (1,)),
        ("x", (1,)),
        ("x", (2,)),
        ("y", (2,)),
    ]
    assert [(r.system, r.prompt) for r in runs][:2] == [("x", "p0"), ("y", "p0")]


def _long_runs():
    """fp32 systems on two documents: ort-genai 40 tok/s, ar 30 -> 15 with length, pard twice ar; pard differs
    from ar on the second document after 2 tokens."""
    prompts = [
        peers.Prompt("long", "doc200-0", [1] * 230, 4, 200, 190),
        peers.Prompt("long", "doc5000-0", [1] * 5030, 4, 5000, 4990),
    ]
    outputs = {
        ("fp32/ort-genai", "doc200-0"): ([5, 6, 7, 8], 40.0, 4),
        ("fp32/ort-genai", "doc5000-0"): ([5, 6, 7, 8], 40.0, 4),
        ("fp32/ar", "doc200-0"): ([5, 6, 7, 8], 30.0, 4),
        ("fp32/ar", "doc5000-0"): ([5, 6, 7, 8], 15.0, 4),
        ("fp32/pard", "doc200-0"): ([5, 6, 7, 8], 60.0, 2),
        ("fp32/pard", "doc5000-0"): ([5, 6, 0, 0], 30.0, 2),
    }
    runs = [
        peers.Run(system, prompt, peers.Output(tokens, rate, 1.0, forwards))
        for (system, prompt), (tokens, rate, forwards) in outputs.items()
    ]
    return runs, prompts


def test_summary_ratios_agreement_and_long_context():
    runs, prompts = _long_runs()
    names = ["fp32/ort-genai", "fp32/ar", "fp32/pard"]
    summary = peers.workload_summary(runs, prompts, names, ["fp32"])
    assert summary["systems"]["fp32/ar"]["tokens_per_second"] == pytest.approx(22.5)
    assert summary["systems"]["fp32/pard"]["tokens_per_target_forward"] == pytest.approx(2.0)
    assert summary["ratios"]["fp32"] == pytest.approx(
        {"ar_vs_ort_genai": 22.5 / 40, "pard_vs_ort_genai": 45 / 40, "pard_vs_ar": 2.0}
    )
    assert summary["agreement"]["fp32"]["ar_vs_ort_genai"] == {
        "identical": 2,
        "prompts": 2,
        "common_prefix_fraction": 1.0,
    }
    assert summary["agreement"]["fp32"]["pard_vs_ar"]["identical"] == 1
    assert summary["agreement"]["fp32"]["pard_vs_ar"]["common_prefix_fraction"] == pytest.approx(6 / 8)
    assert summary["longest_vs_shortest"] == pytest.approx({"fp32/ort-genai": 1.0, "fp32/ar": 0.5, "fp32/pard": 0.5})
    report = {
        "machine": {"cpu": "test", "onnxruntime": "x"},
        "threads": 2,
        "ort_genai": {"version": "y"},
        "precisions": ["fp32"],
        "workloads": {"long": summary},
    }
    text = peers.format_summary(report)
    assert "ar/ort-genai 0.56" in text and "pard = ar on 1/2 prompts (75.0% common prefix)" in text


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    runs, prompts = _long_runs()
    summary = peers.workload_summary(runs, prompts, ["fp32/ort-genai", "fp32/ar", "fp32/pard"], ["fp32"])
    path = tmp_path / "peers.png"
    peers.plot({"precisions": ["fp32"], "workloads": {"long": summary}}, path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_decode_rate_excludes_the_first_token():
    assert peers.decode_rate(5, start=0.0, first=1.0, end=3.0) == 2.0
    assert peers.decode_rate(1, start=0.0, first=0.5, end=0.5) == 2.0  # one token: over all the time


def test_engine_labels_are_builder_precisions():
    assert peers.parse_engines(["fp32=engines/a", "int4=engines/b"]) == {
        "fp32": Path("engines/a"),
        "int4": Path("engines/b"),
    }
    for bad in (["engines/a"], ["q4=engines/a"], ["fp32=a", "fp32=b"]):
        with pytest.raises(PardExportError):
            peers.parse_engines(bad)


def test_builder_command_is_offline_cpu_and_pins_int4():
    command = peers.builder_command(Path("m.gguf"), Path("cfg"), "int4", Path("out"), Path("cache"))
    assert command[1:3] == ["-m", "onnxruntime_genai.models.builder"]
    assert command[command.index("-p") + 1] == "int4" and command[command.index("-e") + 1] == "cpu"
    assert {"hf_token=false", "block_size=32", "accuracy_level=4"} <= set(command)
