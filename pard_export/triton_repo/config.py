"""The `pard` model's config.pbtxt: built on the template in runtime/triton as a tritonclient ModelConfig
protobuf, and checked (syntax, field names and types, then what the model needs) before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RepositoryError
from .protocol import INPUTS, OUTPUTS, Tensor

MODEL_NAME = "pard"
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# config parameters the model reads (runtime/triton/pard/1/model.py)
ENGINE_DIR, MAX_TOKENS_LIMIT, THREADS = "engine_dir", "max_tokens_limit", "threads"


@dataclass(frozen=True)
class ServingSettings:
    engine_dir: str  # absolute, or relative to the model's version folder
    max_tokens_limit: int = 4096
    max_batch_size: int = 8
    instances: int = 1
    kind: str = "cpu"
    threads: int = 0  # onnxruntime intra-op threads per instance; 0: onnxruntime's default


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise RepositoryError("tritonclient is not installed; pip install 'pard-export[triton]'") from e
    return model_config_pb2


def build_config(template: str, settings: ServingSettings):
    """A ModelConfig from the template text and the settings."""
    pb2 = _model_config_pb2()
    config = parse_config(template, "the config template")
    config.name = MODEL_NAME
    config.max_batch_size = settings.max_batch_size
    for tensor in INPUTS:
        config.input.add(
            name=tensor.name, data_type=pb2.DataType.Value(tensor.data_type), dims=tensor.dims, optional=tensor.optional
        )
    for tensor in OUTPUTS:
        config.output.add(name=tensor.name, data_type=pb2.DataType.Value(tensor.data_type), dims=tensor.dims)
    config.instance_group.add(count=settings.instances, kind=pb2.ModelInstanceGroup.Kind.Value(KINDS[settings.kind]))
    parameters = {
        ENGINE_DIR: settings.engine_dir,
        MAX_TOKENS_LIMIT: str(settings.max_tokens_limit),
        THREADS: str(settings.threads),
    }
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def render(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str, source: str):
    """ModelConfig from config.pbtxt text; a syntax error, unknown field or wrong type names the line."""
    from google.protobuf import text_format

    config = _model_config_pb2().ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise RepositoryError(f"{source} is not a valid Triton model config: {e}") from e
    return config


def check_config(config, source: str) -> None:
    """What the `pard` model needs beyond valid protobuf."""
    pb2 = _model_config_pb2()
    problems = []
    if config.backend != "python":
        problems.append(f'backend is "{config.backend}", expected "python"')
    if not config.model_transaction_policy.decoupled:
        problems.append("model_transaction_policy.decoupled must be true (streaming)")
    if config.max_batch_size < 1:
        problems.append("max_batch_size must be at least 1 (requests are batched)")
    problems += _tensor_problems("input", config.input, INPUTS, pb2)
    problems += _tensor_problems("output", config.output, OUTPUTS, pb2)
    missing = [p for p in (ENGINE_DIR, MAX_TOKENS_LIMIT) if not config.parameters[p].string_value]
    problems += [f"parameter {p} is missing" for p in missing]
    if not missing and not config.parameters[MAX_TOKENS_LIMIT].string_value.isdigit():
        problems.append(f"parameter {MAX_TOKENS_LIMIT} must be a positive integer")
    if problems:
        raise RepositoryError(f"{source}: " + "; ".join(problems))


def _tensor_problems(kind: str, found, expected: tuple[Tensor, ...], pb2) -> list[str]:
    have = {t.name: (pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in found}
    want = {t.name: (t.data_type, t.dims) for t in expected}
    problems = [f"{kind} {name} is missing" for name in want if name not in have]
    problems += [f"{kind} {name} is not one the model knows" for name in have if name not in want]
    problems += [
        f"{kind} {name} is {have[name]}, expected {want[name]}"
        for name in want
        if name in have and have[name] != want[name]
    ]
    return problems
