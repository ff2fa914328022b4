#!/usr/bin/env bash
# Train the SmolLM2 PARD draft on the project's GPU machine (it has torch + transformers; nothing to install).
# In (carried, gitignored): training/data/smollm2-greedy.jsonl and training/data/init-pack/ (the initial draft,
# packed by training/transfer.py). Out: $OUT/pack-*.safetensors (the trained draft) and $OUT/train.log.
# Extra arguments go to `pard-export train` (e.g. --device cpu --max-steps 2 for a local dry run).
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
work=$(mktemp -d)
python3 training/transfer.py unpack training/data/init-pack "$work/init"
python3 -m pard_export.cli train --config training/smollm2-draft.toml --init "$work/init" --out "$work/draft" "$@" \
    2>&1 | tee "$OUT/train.log"
python3 training/transfer.py pack "$work/draft" "$OUT" --no-tokenizer
