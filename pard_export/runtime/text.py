"""Text in and out with the `tokenizers` library and the model's own chat template (no transformers)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import GenerationError


class TextCodec:
    def __init__(self, directory: Path):
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = directory / "chat_template.jinja"
        self.chat_template = template_path.read_text() if template_path.is_file() else self.config.get("chat_template")
        self._compiled = None

    def encode(self, text: str) -> list[int]:
        """As transformers' tokenizer(text): with the special tokens its post-processor adds (e.g. BOS)."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def encode_chat(self, text: str) -> list[int]:
        """One user turn through the chat template, ending with the assistant's generation prompt."""
        return self.encode_messages([{"role": "user", "content": text}])

    def encode_messages(self, messages: list[dict]) -> list[int]:
        """A conversation ({role, content} dicts) through the chat template, ending with the assistant's generation
        prompt."""
        if not self.chat_template:
            raise GenerationError(
                "this engine's tokenizer has no chat template; pass the raw prompt (generate without --chat, "
                "or /v1/completions)"
            )
        from jinja2 import TemplateError  # jinja2 loads with the first chat, as in _jinja_environment

        try:
            rendered = self._template().render(
                messages=messages,
                add_generation_prompt=True,
                **{
                    name: _token_text(self.config.get(name))
                    for name in ("bos_token", "eos_token", "pad_token", "unk_token")
                },
            )
        except TemplateError as e:  # e.g. a message without the keys the template reads
            raise GenerationError(f"the chat template cannot render these messages: {e}") from e
        return self.tokenizer.encode(rendered, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _template(self):
        if self._compiled is None:
            self._compiled = _jinja_environment().from_string(self.chat_template)
        return self._compiled


def _token_text(token) -> str:
    if isinstance(token, dict):  # older configs store AddedToken dicts
        return token.get("content", "")
    return token or ""


def _jinja_environment():
    """The environment transformers renders chat templates in: sandboxed, trim/lstrip blocks, its helpers."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise GenerationError(f"the chat template refused the conversation: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
