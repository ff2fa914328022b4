"""COD training of PARD drafts (pard-method.md §5): self-distillation data (distill), the block layout and keep
sets (layout), settings (config) and the loop (trainer). Needs torch and transformers; the runtime never imports it."""
