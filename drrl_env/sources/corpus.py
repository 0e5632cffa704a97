"""Text corpora: documents with a fixed train/test split.

The default corpus is real English text shipped with every CPython: the documentation topics of
``pydoc_data.topics`` (79 topics in CPython 3.11, ~465k characters).  Each topic is cut at blank
lines into documents of at most ``DOC_CHARS`` characters (about 400-500 tokens of BERT word pieces),
so one document roughly fills the default model's 512 positions.

Split rule (by topic, so no topic's text is in both splits): a topic is a test topic when
``zlib.crc32(topic_name) % 5 == 0`` (about 20 % of topics).  User corpora are split the same way
by document name (file name, or ``doc-<index>`` for a list of strings).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DOC_CHARS = 2000
TEST_MODULUS = 5


@dataclass(frozen=True)
class Document:
    """One episode's text.  ``group`` decides the split (the topic or file it came from)."""

    name: str
    group: str
    text: str

    @property
    def split(self) -> str:
        return "test" if zlib.crc32(self.group.encode()) % TEST_MODULUS == 0 else "train"


def load_corpus(corpus: str | Sequence[str] | None, split: str = "all") -> list[Document]:
    """Documents of ``corpus`` in ``split`` ("train", "test" or "all"), in a fixed order.

    ``corpus``: ``None`` for the pydoc topics; a path to a text file (cut like a topic) or a folder
    of ``*.txt`` files (each file cut like a topic); or a sequence of strings, one document each.
    Raises ``ValueError`` for a missing path, an empty corpus or an empty split.
    """
    if corpus is None:
        from pydoc_data.topics import topics

        documents = [d for name in sorted(topics) for d in _cut(name, topics[name])]
        origin = "pydoc_data.topics"
    elif isinstance(corpus, str):
        path = Path(corpus)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise ValueError(f"corpus folder {corpus!r} holds no *.txt files")
        else:
            raise ValueError(
                f"corpus {corpus!r} is neither a file nor a folder; pass a text file, a folder of "
                "*.txt files, a list of strings, or None for the built-in pydoc corpus")
        documents = [d for f in files for d in _cut(f.name, _read_text(f))]
        origin = corpus
    else:
        documents = [Document(f"doc-{i}", f"doc-{i}", text) for i, text in enumerate(corpus)
                     if isinstance(text, str) and text.strip()]
        if len(documents) != len(corpus):
            raise ValueError("every corpus entry must be a non-empty string")
        origin = f"a list of {len(corpus)} strings"
    if not documents:
        raise ValueError(f"corpus {origin} holds no text")
    if split == "all":
        return documents
    chosen = [d for d in documents if d.split == split]
    if not chosen:
        raise ValueError(
            f"corpus {origin} has no {split!r} documents ({len(documents)} in all); a document is "
            f"a test document when crc32(name) % {TEST_MODULUS} == 0; use split='all'")
    return chosen


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
                         "convert it to UTF-8 or leave it out") from err


def _cut(group: str, text: str) -> list[Document]:
    """Cut ``text`` at blank lines into pieces of at most ``DOC_CHARS`` characters.

    A paragraph longer than ``DOC_CHARS`` becomes a piece of its own (the tokenizer truncates it).
    """
    pieces: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        if current and len(current) + 2 + len(paragraph) > DOC_CHARS:
            pieces.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        pieces.append(current)
    return [Document(f"{group}#{i}", group, piece) for i, piece in enumerate(pieces)]
