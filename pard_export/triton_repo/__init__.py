"""Triton stage: an engine directory -> a Triton Inference Server model repository (python backend)."""

from ..errors import RepositoryError
from .config import MODEL_NAME
from .repository import check_repository, write_repository

__all__ = ["MODEL_NAME", "RepositoryError", "check_repository", "write_repository"]
