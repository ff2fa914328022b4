"""The project's exceptions: the CLI turns any PardExportError into one line and exit code 2."""


class PardExportError(Exception):
    """Bad input or an unusable artifact; the message says what was expected, what was found and the fix."""


class SourceError(PardExportError):
    """A model source (preset, hub id, directory, GGUF file) cannot be resolved or loaded."""


class CompatibilityError(PardExportError):
    """Draft and target cannot be paired (tokenizer, vocabulary, mask id, architecture)."""


class EngineError(PardExportError):
    """An engine directory is missing, corrupted or does not match its manifest."""


class GenerationError(PardExportError, ValueError):
    """A generation request is invalid (prompt, lengths, sampling settings)."""


class BackendUnavailableError(PardExportError):
    """An optional backend (TensorRT, CUDA) is not installed or has no GPU on this host."""


class TrtBuildError(PardExportError):
    """TensorRT (or TensorRT-RTX) could not parse a graph or build a plan from it."""


class RepositoryError(PardExportError):
    """A Triton model repository or its config is not what Triton and the `pard` model need."""


class RequestError(GenerationError):
    """A serving request the model refuses; the message goes back to the client as the response's error."""


class QueueFullError(GenerationError):
    """The scheduler's queue is full; the request may be sent again later (HTTP 503)."""
