"""Export stage: model sources -> checked pair -> ONNX graphs -> engine directory. Needs torch + transformers."""

from .build import build

__all__ = ["build"]
