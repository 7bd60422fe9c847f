"""The course corpus: real English text that every Python installation already has.

Every later chapter trains on this corpus, and no machine that builds the course downloads anything,
so the corpus is assembled from two parts of the running CPython itself:

1. **The Python reference documentation** that ships as :mod:`pydoc_data.topics` (what ``help("if")``
   prints): one document per topic (79 topics, 0.46 MB of text on Python 3.11).
2. **The docstrings of the standard library**, read from its source files with :mod:`ast` (nothing is
   imported: importing arbitrary modules has side effects, ``antigravity`` opens a web browser). One
   document per module: the module docstring followed by the docstrings of its classes, functions
   and methods in source order. Tests, ``idlelib``, ``lib2to3``, ``ensurepip``, ``turtledemo``,
   ``site-packages`` and the like are skipped. On Python 3.11, 572 source files give 364 documents
   and 1.6 MB of text.

Each document is cleaned (docstring indentation removed, tabs expanded, trailing spaces stripped,
runs of blank lines collapsed to one) and documents shorter than :data:`MIN_DOCUMENT_CHARS` are
dropped. On Python 3.11.7 that gives 443 documents and 2.08 million characters (2.09 MB of UTF-8,
almost all ASCII): 1.89 MB for ``train``, 0.13 MB for ``validation`` and 0.06 MB for ``test``.
:func:`corpus_summary` gives the exact numbers of the running interpreter. It is technical English:
prose about programming, with code samples and identifiers, much like the documentation that
language models are trained on.

The text differs between Python versions (and so do its exact sizes); nothing in the course depends
on the exact text. It is split by document, with a fixed seed, into ``train`` (90%), ``validation``
(5%) and ``test`` (5%), built once and cached under the course cache (:mod:`course_lib.cache`),
keyed by the Python version and the source.

**Licence.** The documentation and the docstrings are part of CPython, copyright the Python Software
Foundation, and are distributed under the PSF License Agreement (version 2); see
https://docs.python.org/3/license.html. The course uses them unchanged apart from the whitespace
cleaning above.

Other text: ``load_corpus(split, source=...)`` with a local text file (documents are its paragraphs,
separated by blank lines), a local folder (documents are its files) or, with a network, the name of a
Hugging Face dataset (its ``train`` split's ``text`` column, through ``datasets.load_dataset``). All
of them are split the same way.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import sys
import sysconfig
from pathlib import Path

from course_lib.cache import building, cache_entry, cache_key, read_json, write_atomic

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"validation": 0.05, "test": 0.05}  # the rest is train
SPLIT_SEED = 1234
MIN_DOCUMENT_CHARS = 200
# Bump when the way documents are built or cleaned changes: cached corpora are then rebuilt.
CORPUS_VERSION = 1

# Parts of the standard library folder that are not documentation of the standard library.
SKIPPED_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "lib2to3", "site-packages", "dist-packages", "ensurepip",
    "turtledemo", "pydoc_data", "lib-dynload", "__pycache__", "__phello__",
})


# -- building documents ----------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Tabs expanded, trailing spaces stripped, blank-line runs collapsed, ends stripped."""
    lines = [line.rstrip() for line in text.expandtabs(4).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _docstrings(node: ast.AST):
    """Docstrings of ``node`` and of every class/function inside it, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.Try)):
            yield from _docstrings(child)


def stdlib_source_files() -> list[Path]:
    """The standard library's ``.py`` files that the corpus reads, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(("config-", "."))
                         and not d.startswith("test"))
        found += [Path(folder, f) for f in files if f.endswith(".py") and not f.startswith("test")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def python_docs_documents() -> list[str]:
    """The built-in corpus: reference topics, then one document per standard-library module."""
    from pydoc_data.topics import topics

    documents = [clean_text(topics[name]) for name in sorted(topics)]
    for path in stdlib_source_files():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # a deliberately broken file, or one for another version
            continue
        documents.append(clean_text("\n\n".join(_docstrings(tree))))
    return [doc for doc in documents if len(doc) >= MIN_DOCUMENT_CHARS]


def local_documents(path: Path) -> list[str]:
    """Documents of a local source: a folder's files (sorted), or one file's blank-line paragraphs."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        texts = [clean_text(p.read_text(encoding="utf-8", errors="replace")) for p in files]
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        texts = [clean_text(part) for part in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))]
    return [t for t in texts if t]


def hub_documents(name: str) -> list[str]:
    """The ``text`` column of the ``train`` split of Hugging Face dataset ``name`` (needs a network)."""
    try:
        import datasets
    except ImportError as err:
        raise ValueError(f"source={name!r} is not an existing file or folder, and loading it as a Hugging "
                         "Face dataset needs the `datasets` package") from err
    rows = datasets.load_dataset(name, split="train")
    if "text" not in rows.column_names:
        raise ValueError(f"dataset {name!r} has no 'text' column (columns: {rows.column_names})")
    return [t for t in (clean_text(x) for x in rows["text"]) if t]


def _describe(source: str | None) -> dict:
    """What identifies a source for the cache: changes to a local file or folder rebuild it."""
    if source is None:
        return {"kind": "python-docs", "python": sys.version.split()[0]}
    path = Path(source)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return {"kind": "local", "path": str(path.resolve()), "files": stamp}
    return {"kind": "hub", "name": source}


def _documents(source: str | None) -> list[str]:
    if source is None:
        return python_docs_documents()
    path = Path(source)
    return local_documents(path) if path.exists() else hub_documents(source)


# -- splitting and caching -------------------------------------------------------------------------
def split_documents(documents: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Seeded split by document: 5% validation, 5% test (at least one each from 3 documents), rest train.

    Each split keeps the documents' original order; a document lands in exactly one split.
    """
    n = len(documents)
    sizes = {name: round(frac * n) for name, frac in SPLIT_FRACTIONS.items()}
    if n >= 3:
        sizes = {name: max(1, size) for name, size in sizes.items()}
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test = sorted(order[:sizes["test"]])
    validation = sorted(order[sizes["test"]:sizes["test"] + sizes["validation"]])
    train = sorted(order[sizes["test"] + sizes["validation"]:])
    return {name: [documents[i] for i in idx] for name, idx in
            (("train", train), ("validation", validation), ("test", test))}


CORPUS_ENV = "COURSE_CORPUS"


def resolve_source(source: str | os.PathLike | None) -> str | None:
    """``source`` as a string; ``None`` becomes ``$COURSE_CORPUS`` if set (one switch for every
    chapter), else stays ``None``, the built-in corpus."""
    if source is None:
        return os.environ.get(CORPUS_ENV) or None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path, a dataset name or None, got {type(source).__name__}")
    return os.fspath(source)


def corpus_cache_path(source: str | None = None) -> Path:
    """Where the split corpus of ``source`` is (or will be) cached."""
    source = resolve_source(source)
    return cache_entry("corpus", f"corpus-{cache_key(CORPUS_VERSION, SPLIT_SEED, _describe(source))}.json")


def build_corpus(source: str | None = None) -> dict:
    """``{"meta": {...}, "splits": {"train": [...], "validation": [...], "test": [...]}}``, cached."""
    source = resolve_source(source)
    path = corpus_cache_path(source)
    with building(path):
        cached = read_json(path)  # None when missing or damaged: then it is rebuilt
        if cached is not None:
            return cached
        documents = _documents(source)
        if not documents:
            raise ValueError(f"source={source!r} holds no text")
        corpus = {"meta": {"source": _describe(source), "version": CORPUS_VERSION, "seed": SPLIT_SEED},
                  "splits": split_documents(documents)}
        write_atomic(path, json.dumps(corpus, ensure_ascii=False))
    return corpus


def load_corpus(split: str = "train", source: str | None = None) -> list[str]:
    """The documents of one split of the course corpus (or of ``source``), built once and cached.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``; the three are disjoint by document.
        source: ``None`` for the built-in corpus (Python's own documentation, see the module
            docstring, or ``$COURSE_CORPUS`` when set); a local text file (documents are its
            paragraphs) or folder (documents are its files); or the name of a Hugging Face dataset
            (needs ``datasets`` and a network).

    Returns:
        A list of documents (``str``), in their original order.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return build_corpus(source)["splits"][split]


def corpus_summary(source: str | None = None) -> dict:
    """Sizes per split (documents, characters, UTF-8 bytes) and what the corpus is made of."""
    source = resolve_source(source)
    corpus = build_corpus(source)
    splits = {}
    for name in SPLITS:
        docs = corpus["splits"][name]
        splits[name] = {"documents": len(docs), "characters": sum(map(len, docs)),
                        "bytes": sum(len(d.encode("utf-8")) for d in docs)}
    sources = (["pydoc_data.topics (Python reference documentation)", "standard-library docstrings (ast)"]
               if source is None else [str(source)])
    return {"python": sys.version.split()[0], "sources": sources, "licence":
            "PSF License Agreement v2" if source is None else "that of the source", "splits": splits,
            "total": {key: sum(s[key] for s in splits.values()) for key in ("documents", "characters", "bytes")}}
