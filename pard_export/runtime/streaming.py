"""Text as tokens arrive: incremental detokenization that never splits a character, and stop strings."""

from __future__ import annotations

from collections.abc import Sequence

from .text import TextCodec

_INCOMPLETE = "\ufffd"  # what a byte-level decoder shows for a character whose bytes have not all arrived


class IncrementalDetokenizer:
    """Decodes a window of recent tokens and returns only the new complete characters (as vLLM does)."""

    def __init__(self, codec: TextCodec):
        self.codec = codec
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0

    def add(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        before, now = self._window()
        if len(now) <= len(before) or now.endswith(_INCOMPLETE):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return now[len(before) :]

    def flush(self) -> str:
        """At the end: whatever is left, an incomplete character included (as a full decode shows it)."""
        before, now = self._window()
        self.prefix_offset = self.read_offset = len(self.ids)
        return now[len(before) :]

    def _window(self) -> tuple[str, str]:
        """The text already returned from the window, and the window's text with the unread tokens."""
        window = self.ids[self.prefix_offset :]
        return self.codec.decode(window[: self.read_offset - self.prefix_offset]), self.codec.decode(window)


class RowText:
    """One sequence's text: grows token by token, ends at the first stop string, and shows only what no
    later token can take back (a possible start of a stop string is held until it is decided)."""

    def __init__(self, codec: TextCodec, stop: Sequence[str] = ()):
        self.detokenizer = IncrementalDetokenizer(codec)
        self.stop = tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.shown = 0
        self.stopped = False

    def add(self, token: int) -> bool:
        """Append one token; True once a stop string has appeared (the text then ends before it)."""
        delta = self.detokenizer.add([token])
        if delta and not self.stopped:
            search_from = max(0, len(self.text) - self.hold)
            self.text += delta
            hits = [i for s in self.stop if (i := self.text.find(s, search_from)) >= 0]
            if hits:
                self.text, self.stopped = self.text[: min(hits)], True
        return self.stopped

    def take_visible(self, final: bool) -> str:
        if final and not self.stopped:
            self.text += self.detokenizer.flush()
        end = len(self.text) if final or self.stopped else max(self.shown, len(self.text) - self.hold)
        piece, self.shown = self.text[self.shown : end], end
        return piece
