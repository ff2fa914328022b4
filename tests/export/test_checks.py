from __future__ import annotations

from types import SimpleNamespace

import pytest

import tiny_models
from pard_export.errors import CompatibilityError, PardExportError, SourceError
from pard_export.export import checks
from pard_export.export.arch import ArchSpec
from pard_export.export.sources import resolve, resolve_pair


@pytest.mark.parametrize("k", [0, 33, -1])
def test_k_out_of_range(k):
    with pytest.raises(PardExportError, match="between 1 and 32"):
        checks.check_k(k)


def test_k_limits_accepted():
    checks.check_k(1)
    checks.check_k(32)


def test_tokenizers_must_agree():
    a = tiny_models.make_tokenizer()
    b = tiny_models.make_tokenizer(corpus=["something else entirely, other merges"] * 3)
    assert checks.shared_vocab(a, a) == tiny_models.VOCAB
    with pytest.raises(CompatibilityError, match="tokenizers differ"):
        checks.shared_vocab(a, b)


def test_mask_id_sources_in_order():
    config = SimpleNamespace(pard_token=7, mask_token_id=9)
    assert checks.resolve_mask_id(config, None, 5) == 7
    assert checks.resolve_mask_id(SimpleNamespace(mask_token_id=9), None, 5) == 9
    assert checks.resolve_mask_id(SimpleNamespace(), None, 5) == 5
    assert checks.resolve_mask_id(config, 11, 5) == 11
    with pytest.raises(CompatibilityError, match="--mask-token-id"):
        checks.resolve_mask_id(SimpleNamespace(), None, None)


def test_mask_id_range_and_specials():
    checks.check_mask_id(3, 320, [("end-of-sequence", 2)])
    with pytest.raises(CompatibilityError, match="outside"):
        checks.check_mask_id(320, 320, [])
    with pytest.raises(CompatibilityError, match="end-of-sequence"):
        checks.check_mask_id(2, 320, [("end-of-sequence", 2)])


def test_draft_with_fewer_rows_than_tokenizer_ids():
    with pytest.raises(CompatibilityError, match="embedding rows"):
        checks.check_rows("draft", 300, 320)


def test_unsupported_architecture():
    with pytest.raises(CompatibilityError, match="supported architectures"):
        ArchSpec.from_hf_config(SimpleNamespace(model_type="gpt2"), "target")


def test_resolve_sources(tmp_path):
    assert resolve("org/model@v1").location == "org/model"
    assert resolve("org/model@v1").revision == "v1"
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve(str(tmp_path / "m.gguf")).gguf_file == "m.gguf"
    with pytest.raises(SourceError, match="presets: .*smollm2-135m"):
        resolve("no-such-preset")
    with pytest.raises(SourceError, match="does not exist"):
        resolve(str(tmp_path / "missing" / "dir"))
    with pytest.raises(SourceError, match="--draft is required"):
        resolve_pair("org/model", None)  # a hub id: resolvable, but no preset draft
