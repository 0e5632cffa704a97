"""Text corpora: documents with a fixed train/validation/test split.

The default corpus is real English text shipped with every CPython: the documentation topics of
``pydoc_data.topics`` (79 topics in CPython 3.11, ~465k characters).  Each topic is cut at blank
lines into documents of at most ``DOC_CHARS`` characters (about 400-500 tokens of BERT word pieces),
so one document roughly fills the default model's 512 positions.

The long-context corpus ``"stdlib-docs"`` is the documentation of ~100 standard-library modules as
``pydoc`` renders it (one document per module, 1,400 to 200,000+ characters; the tokenizer
truncates at ``max_seq_len``), split by module, with every paragraph of 80 characters or more that a
training document also holds removed from the test documents.

Split rule (by topic, so no topic's text is in two splits): a topic is a test topic when
``zlib.crc32(topic_name) % 5 == 0``, a validation topic when it is 1 (about 20 % of topics each),
else a training topic (``base.split_of``).  User corpora are split the same way by file name (or
``doc-<index>`` for a list of strings).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from drrl_env.sources.base import split_of

DOC_CHARS = 2000


@dataclass(frozen=True)
class Document:
    """One episode's text.  ``group`` decides the split (the topic or file it came from)."""

    name: str
    group: str
    text: str

    @property
    def split(self) -> str:
        return split_of(zlib.crc32(self.group.encode()))


def load_corpus(corpus: str | Sequence[str] | None, split: str = "all") -> list[Document]:
    """Documents of ``corpus`` in ``split`` ("train", "validation", "test" or "all"), in a fixed order.

    ``corpus``: ``None`` for the pydoc topics; ``"stdlib-docs"`` for the long-context corpus (one
    document per standard-library module, its rendered documentation; test documents lose every
    paragraph that a training document also holds); a path to a text file (cut like a topic) or a folder
    of ``*.txt`` files (each file cut like a topic); or a sequence of strings, one document each.
    Raises ``ValueError`` for a missing path, an empty corpus or an empty split.
    """
    if corpus is None:
        from pydoc_data.topics import topics

        documents = [d for name in sorted(topics) for d in _cut(name, topics[name])]
        origin = "pydoc_data.topics"
    elif corpus == STDLIB_DOCS:
        documents = _without_train_paragraphs([Document(name, name, text) for name, text in _stdlib_docs()])
        origin = STDLIB_DOCS
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
            f"a test document when crc32(group) % 5 == 0, a validation one when it is 1; use split='all'")
    return chosen


STDLIB_DOCS = "stdlib-docs"
# Modules whose rendered documentation forms the long-context corpus: importable on every platform
# CPython supports, without side effects, most of them 1,000 tokens or more of text.
STDLIB_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "colorsys",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "doctest", "email.message", "enum", "filecmp", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.server", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "lzma", "mailbox", "math", "mimetypes",
    "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pickletools", "platform", "poplib", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile", "zoneinfo",
)
MIN_SHARED_PARAGRAPH = 80  # characters: shorter paragraphs ("Return self==value.") may repeat across splits


@functools.cache
def _stdlib_docs() -> tuple[tuple[str, str], ...]:
    """(module, its documentation as ``pydoc`` renders it in plain text), without the FILE section
    (an install path, different on every machine)."""
    import importlib
    import pydoc

    docs = []
    for name in STDLIB_MODULES:
        text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        docs.append((name, re.sub(r"\nFILE\n(    .*\n)+", "\n", text)))
    return tuple(docs)


def _normalized(paragraph: str) -> str:
    return " ".join(paragraph.split())


def _without_train_paragraphs(documents: list[Document]) -> list[Document]:
    """Documents of the test split with every paragraph of ``MIN_SHARED_PARAGRAPH`` characters or more
    that also stands in a training document removed (whitespace normalized), so no text is in two splits."""
    seen = {_normalized(p) for d in documents if d.split == "train" for p in d.text.split("\n\n")
            if len(_normalized(p)) >= MIN_SHARED_PARAGRAPH}
    kept = []
    for doc in documents:
        if doc.split != "train":
            text = "\n\n".join(p for p in doc.text.split("\n\n") if _normalized(p) not in seen)
            doc = Document(doc.name, doc.group, text)
        kept.append(doc)
    return kept


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
