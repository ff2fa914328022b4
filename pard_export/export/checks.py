"""Checks made before any export: can this draft serve this target, with this k and mask id?"""

from __future__ import annotations

from ..contract import MAX_K
from ..errors import CompatibilityError, PardExportError

MASK_CONFIG_KEYS = ("pard_token", "mask_token_id")


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise PardExportError(
            f"k must be between 1 and {MAX_K}, got {k}; pass --k 8 (the depth PARD drafts are trained with)"
        )


def check_max_seq_len(max_seq_len: int, k: int) -> None:
    if max_seq_len < k + 2:
        raise PardExportError(
            f"--max-seq-len {max_seq_len} leaves no room for a prompt and {k} drafts; pass at least {k + 2}"
        )


def shared_vocab(target_tokenizer, draft_tokenizer) -> int:
    """The number of ids both tokenizers map identically; any difference is an error."""
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if target_vocab != draft_vocab:
        differing = sorted(set(target_vocab.items()) ^ set(draft_vocab.items()), key=lambda kv: kv[1])
        token, token_id = differing[0]
        raise CompatibilityError(
            f"draft and target tokenizers differ ({len(target_vocab)} vs {len(draft_vocab)} tokens; e.g. {token!r} "
            f"-> id {token_id} in only one of them); a PARD draft must use its target's tokenizer"
        )
    return max(target_vocab.values()) + 1


def check_rows(role: str, rows: int, vocab: int) -> None:
    if rows < vocab:
        raise CompatibilityError(
            f"the {role} has {rows} embedding rows but its tokenizer has {vocab} ids; "
            "the model does not match its tokenizer"
        )


def resolve_mask_id(draft_config, override: int | None, preset_default: int | None) -> int:
    """The mask id: --mask-token-id, else the draft config's pard_token / mask_token_id, else the preset's."""
    if override is not None:
        return override
    for key in MASK_CONFIG_KEYS:
        value = getattr(draft_config, key, None)
        if value is not None:
            return int(value)
    if preset_default is not None:
        return preset_default
    raise CompatibilityError(
        "the draft's config names no mask token (pard_token or mask_token_id); pass --mask-token-id ID, "
        "an unused reserved token id of the draft's vocabulary"
    )


def check_mask_id(mask_id: int, draft_rows: int, special_ids: list[tuple[str, int | None]]) -> None:
    if not 0 <= mask_id < draft_rows:
        raise CompatibilityError(
            f"mask token id {mask_id} is outside the draft's vocabulary (0..{draft_rows - 1}); "
            "pass --mask-token-id with an unused reserved id"
        )
    for name, special in special_ids:
        if special == mask_id:
            raise CompatibilityError(
                f"mask token id {mask_id} is the {name} token, which generation emits; pass --mask-token-id with "
                "an unused reserved id"
            )
