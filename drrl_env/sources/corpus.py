"""Text corpora: documents with a fixed, leak-free train/validation/test split.

The default corpus is real English text shipped with every CPython: the documentation topics of
``pydoc_data.topics`` (79 topics in CPython 3.11, ~465k characters).  Each topic is cut at blank
lines into documents of at most ``DOC_CHARS`` characters (about 400-500 tokens of BERT word pieces),
so one document roughly fills the default model's 512 positions.

The long-context corpus ``"stdlib-docs"`` is the documentation of ~100 standard-library modules as
``pydoc`` renders it (one document per module, 1,400 to 200,000+ characters; the tokenizer
truncates at ``max_seq_len``).  ``"stdlib-source"`` is the Python source of the same modules (a
package's ``__init__.py``; modules without a ``.py`` file are left out): code, another kind of text,
split by module as the documentation is, so a module's source is in the split of its documentation.

Splits (:func:`leak_free`), the same for every corpus read from text (built-in or a user's files):

1. Duplicates out: groups (topics, modules, files) are taken largest first, and a group at least
   ``DUPLICATE_SHARE`` of whose long-paragraph text (paragraphs of ``MIN_SHARED_PARAGRAPH``
   characters or more, whitespace normalized) is already in a group kept before it is left out: pydoc
   repeats whole topics inside others (``attribute-access`` is a section of ``specialnames``).
2. Split by group, so all documents of a topic, module or file are in one split: test when
   ``zlib.crc32(group) % 10`` is 0-2, validation when it is 3-4, else train (``base.split_of``).
3. Every long paragraph that still stands in several groups stays only in the first split that
   holds it, in the order train, validation, test.

So no long paragraph is in two splits (a test enforces it).  A list of strings is taken as given,
one document each, split by ``doc-<index>``.
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
        return _split_of_group(self.group)


def load_corpus(corpus: str | Sequence[str] | None, split: str = "all") -> list[Document]:
    """Documents of ``corpus`` in ``split`` ("train", "validation", "test" or "all"), in a fixed order.

    ``corpus``: ``None`` for the pydoc topics; ``"stdlib-docs"`` for the long-context corpus (one
    document per standard-library module, its rendered documentation) and ``"stdlib-source"`` for
    those modules' source files (one document each); a path to a text file (cut
    like a topic) or a folder of ``*.txt`` files (each file cut like a topic), all made leak-free
    (:func:`leak_free`); or a sequence of strings, one document each, taken as given.
    Raises ``ValueError`` for a missing path, an empty corpus or an empty split.
    """
    if corpus is None:
        from pydoc_data.topics import topics

        documents = _pydoc_documents(tuple(sorted(topics.items())))
        origin = "pydoc_data.topics"
    elif isinstance(corpus, str) and corpus in STDLIB_CORPORA:
        documents = [Document(name, name, text) for name, text in leak_free(STDLIB_CORPORA[corpus]())]
        origin = corpus
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
                "*.txt files, a list of strings, or None for the built-in pydoc corpus"
            )
        documents = [
            d for name, text in leak_free(tuple((f.name, _read_text(f)) for f in files)) for d in _cut(name, text)
        ]
        origin = corpus
    else:
        documents = [
            Document(f"doc-{i}", f"doc-{i}", text)
            for i, text in enumerate(corpus)
            if isinstance(text, str) and text.strip()
        ]
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
            f"a test document when crc32(group) % 10 is 0-2, a validation one when it is 3-4; use split='all'"
        )
    return chosen


STDLIB_DOCS = "stdlib-docs"
# Modules whose rendered documentation forms the long-context corpus: importable on every platform
# CPython supports, without side effects, most of them 1,000 tokens or more of text.
STDLIB_MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "doctest",
    "email.message",
    "enum",
    "filecmp",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pickletools",
    "platform",
    "poplib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
)
MIN_SHARED_PARAGRAPH = 80  # characters: shorter paragraphs ("Return self==value.") may repeat across splits


@functools.cache
def _stdlib_docs() -> tuple[tuple[str, str], ...]:
    """(module, its documentation as ``pydoc`` renders it in plain text), without the FILE section
    (an install path, different on every machine), the memory addresses that default values print
    (``<object object at 0x7f...>``, different in every process) and ``os.environ``'s value (this
    process's environment): the same text, so the same tokens and cache keys, in every run."""
    import importlib
    import pydoc

    docs = []
    for name in STDLIB_MODULES:
        text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        text = re.sub(r"\nFILE\n(    .*\n)+", "\n", text)
        text = re.sub(r"\n *environb? = environ\(.*", "", text)
        docs.append((name, re.sub(r" at 0x[0-9a-f]+", "", text)))
    return tuple(docs)


@functools.cache
def _stdlib_source() -> tuple[tuple[str, str], ...]:
    """(module, its source file's text) for the modules of ``STDLIB_MODULES`` whose source ships as a
    ``.py`` file, read from the file (the module is not imported; a dotted name imports its package)."""
    import importlib.util

    sources = []
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(".py"):
            sources.append((name, _read_text(Path(spec.origin))))
    return tuple(sources)


STDLIB_SOURCE = "stdlib-source"
STDLIB_CORPORA = {STDLIB_DOCS: _stdlib_docs, STDLIB_SOURCE: _stdlib_source}  # name -> (group, text) pairs


DUPLICATE_SHARE = 0.8  # a group whose long paragraphs are this much in groups kept before it is a duplicate


def _normalized(paragraph: str) -> str:
    return " ".join(paragraph.split())


def _long_paragraphs(text: str) -> set[str]:
    return {p for p in map(_normalized, text.split("\n\n")) if len(p) >= MIN_SHARED_PARAGRAPH}


def leak_free(groups: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """(group, text) pairs with duplicate groups left out and every long paragraph kept in one split
    only (module docstring, steps 1 and 3); the order of ``groups`` is kept."""
    paragraphs = {name: _long_paragraphs(text) for name, text in groups}
    size = {name: sum(map(len, found)) for name, found in paragraphs.items()}
    kept, seen = set(), set()
    for name in sorted(paragraphs, key=lambda n: (-size[n], n)):
        repeated = sum(len(p) for p in paragraphs[name] if p in seen)
        if size[name] and repeated >= DUPLICATE_SHARE * size[name]:
            continue
        kept.add(name)
        seen |= paragraphs[name]
    home: dict[str, str] = {}  # paragraph -> the split that keeps it
    for split in ("train", "validation", "test"):
        for name in sorted(kept):
            if _split_of_group(name) == split:
                for paragraph in paragraphs[name]:
                    home.setdefault(paragraph, split)
    out = []
    for name, text in groups:
        if name in kept:
            split = _split_of_group(name)
            out.append((name, "\n\n".join(p for p in text.split("\n\n") if home.get(_normalized(p), split) == split)))
    return out


def _split_of_group(group: str) -> str:
    return split_of(zlib.crc32(group.encode()))


@functools.cache
def _pydoc_documents(topics: tuple[tuple[str, str], ...]) -> list[Document]:
    return [d for name, text in leak_free(topics) for d in _cut(name, text)]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"corpus file {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
            "convert it to UTF-8 or leave it out"
        ) from err


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
