"""Long English documents of a requested token length, built deterministically from Python's own reference text.

`pydoc_data.topics` (standard library) holds the prose of the Python language reference. Its paragraphs are
filtered to plain prose (no grammar rules, no code, no headings), then concatenated, from a starting paragraph,
until the next one would exceed the token budget; the last paragraph is cut at a sentence boundary. A document
therefore never exceeds its budget and falls short by less than one sentence. The text depends on the Python
version (the topics change between releases); nothing is downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SUMMARY_QUESTION = "Summarize the document above in a few sentences."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Document:
    budget: int  # the requested number of tokens
    index: int  # which of the documents of this budget
    text: str
    tokens: int  # measured with the tokenizer the documents were built with

    @property
    def name(self) -> str:
        return f"doc{self.budget}-{self.index}"


def prose_paragraphs() -> list[str]:
    """Every plain-prose paragraph of the Python reference topics, reflowed to one line, in topic order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            if is_prose(block):
                paragraphs.append(" ".join(block.split()))
    return paragraphs


def is_prose(block: str) -> bool:
    """A paragraph of sentences: one indentation level (code and grammar have several), a capital letter first,
    a full stop last, at least 12 words, and no grammar rule or interpreter prompt."""
    lines = [line for line in block.split("\n") if line.strip()]
    if not lines or len({len(line) - len(line.lstrip()) for line in lines}) != 1:
        return False
    text = " ".join(block.split())
    return (
        text[0].isupper() and text.endswith(".") and len(text.split()) >= 12 and "::=" not in text and ">>>" not in text
    )


def build_document(paragraphs: Sequence[str], budget: int, count_tokens: Callable[[str], int], start: int = 0) -> str:
    """Paragraphs from `start` on (wrapping around), joined by blank lines, as many as fit into `budget` tokens;
    the first paragraph that does not fit contributes the sentences that do."""
    if not paragraphs:
        raise ValueError("no paragraphs to build a document from")
    parts: list[str] = []
    for offset in range(len(paragraphs)):
        paragraph = paragraphs[(start + offset) % len(paragraphs)]
        if count_tokens(_joined(parts + [paragraph])) <= budget:
            parts.append(paragraph)
            continue
        fitting = _fitting_sentences(parts, paragraph, budget, count_tokens)
        if fitting:
            parts.append(fitting)
        break
    return _joined(parts)


def long_documents(budgets: Sequence[int], per_budget: int, count_tokens: Callable[[str], int]) -> list[Document]:
    """`per_budget` documents for each budget; document i of every budget starts at the same paragraph
    (spread evenly over the reference), so a longer document extends a shorter one."""
    paragraphs = prose_paragraphs()
    documents = []
    for budget in budgets:
        for index in range(per_budget):
            text = build_document(paragraphs, budget, count_tokens, start=index * len(paragraphs) // per_budget)
            documents.append(Document(budget, index, text, count_tokens(text)))
    return documents


def document_prompt(document: Document, question: str = SUMMARY_QUESTION) -> str:
    """The user turn: the document, a blank line, the question."""
    return f"{document.text}\n\n{question}"


def _fitting_sentences(parts: list[str], paragraph: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    sentences = _SENTENCE_END.split(paragraph)
    kept: list[str] = []
    for sentence in sentences:
        if count_tokens(_joined(parts + [" ".join(kept + [sentence])])) > budget:
            break
        kept.append(sentence)
    return " ".join(kept)


def _joined(parts: list[str]) -> str:
    return "\n\n".join(parts)
