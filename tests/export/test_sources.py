"""Model sources: loading a GGUF file prints no progress bar of transformers' own between the build's stages."""

from transformers import modeling_gguf_pytorch_utils as gguf_utils

from pard_export.export.sources import without_gguf_progress


def test_the_gguf_dequantisation_bar_is_silenced_and_restored(capfd):
    original = gguf_utils.tqdm
    with without_gguf_progress():
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert capfd.readouterr().err == ""
    assert gguf_utils.tqdm is original
    list(gguf_utils.tqdm(range(3), desc="visible again"))
    assert "visible again" in capfd.readouterr().err  # so the check above could fail
