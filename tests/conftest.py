from __future__ import annotations

import pytest

import tiny_models


def pytest_collection_modifyitems(config, items):
    """Tests marked `tensorrt` skip where TensorRT cannot be imported (CI has no TensorRT)."""
    marked = [item for item in items if item.get_closest_marker("tensorrt")]
    if marked:
        from pard_export.tensorrt_support import tensorrt_available

        if not tensorrt_available():
            for item in marked:
                item.add_marker(pytest.mark.skip(reason="needs TensorRT (pip install tensorrt on an NVIDIA GPU host)"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_pair(tiny_root):
    """tiny_pair(arch) -> (target_dir, draft_dir), made once per session."""
    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = tiny_models.make_pair(tiny_root, arch)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """engine(target, draft, k, **build_kwargs) -> engine directory, built once per session per arguments."""
    from pard_export.export import build

    built = {}

    def get(target, draft, k: int, **kwargs):
        key = (str(target), str(draft), k, tuple(sorted(kwargs.items())))
        if key not in built:
            out = tmp_path_factory.mktemp("engine") / "engine"
            built[key] = build(str(target), k, draft=str(draft), out=out, progress=False, **kwargs)
        return built[key]

    return get


@pytest.fixture(scope="session")
def references(tiny_pair):
    """references(arch) -> [(prompt_ids, the tiny target's own greedy continuation)] for tiny_models.PROMPTS."""
    from transformers import AutoTokenizer

    cache = {}

    def get(arch):
        if arch not in cache:
            target, _ = tiny_pair(arch)
            tokenizer = AutoTokenizer.from_pretrained(target)
            prompts = [tokenizer(p).input_ids for p in tiny_models.PROMPTS]
            cache[arch] = [(ids, tiny_models.reference_greedy(target, ids, tiny_models.NEW_TOKENS)) for ids in prompts]
        return cache[arch]

    return get
