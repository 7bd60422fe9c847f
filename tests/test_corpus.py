"""The course corpus and cache (not graded): built offline, deterministic, split by document, cached.

Nothing here depends on the exact text, which differs between Python versions.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import cache, corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The built-in corpus, built once into a fresh cache folder."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.CACHE_ENV, str(root))
        yield root, corpus.build_corpus()


def test_cache_dir_honours_the_environment(cache_root):
    assert cache.cache_dir("x", "y") == cache_root / "x" / "y" and (cache_root / "x" / "y").is_dir()


def test_write_atomic_replaces_whole_files(cache_root):
    path = cache.write_atomic(cache.cache_dir() / "a.txt", "first")
    cache.write_atomic(path, b"second")
    assert path.read_text() == "second" and [p.name for p in path.parent.iterdir()] == ["a.txt"]


_BUILDER = """
import sys, time
from pathlib import Path
from course_lib.cache import building, write_atomic

entry, log = Path(sys.argv[1]), Path(sys.argv[2])
with building(entry):
    if not entry.is_file():
        with open(log, "a") as f:
            f.write("built\\n")
        time.sleep(2)  # a slow build: the other process asks for the entry meanwhile
        write_atomic(entry, "artefact")
print(entry.read_text())
"""


def test_two_processes_that_need_one_cache_entry_build_it_once(tmp_path):
    entry, log = tmp_path / "entry.txt", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(entry), str(log)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["artefact\n", "artefact\n"]
    assert log.read_text() == "built\n", "both processes built the entry"


def test_cache_key_is_stable_and_distinguishes_values():
    assert cache.cache_key(1, "a", {"b": 2}) == cache.cache_key(1, "a", {"b": 2})
    assert cache.cache_key(1, "a") != cache.cache_key(1, "b")


def test_builtin_corpus_is_real_english_text_of_useful_size(built):
    _, data = built
    splits = data["splits"]
    assert set(splits) == set(corpus.SPLITS)
    docs = [d for name in corpus.SPLITS for d in splits[name]]
    total = sum(map(len, docs))
    assert len(docs) > 200 and total > 1_000_000, f"{len(docs)} documents, {total} characters"
    assert all(isinstance(d, str) and len(d) >= corpus.MIN_DOCUMENT_CHARS for d in docs)
    assert all(d == d.strip() and "\n\n\n" not in d and "\t" not in d for d in docs)
    text = " ".join(docs)
    assert text.count(" the ") > 10_000 and sum(c.isascii() for c in text) / len(text) > 0.99
    assert all(splits[name] for name in corpus.SPLITS)
    assert len(splits["train"]) > 10 * len(splits["validation"])


def test_builtin_corpus_is_deterministic(built, cache_root):
    _, data = built
    assert corpus.split_documents(corpus.python_docs_documents()) == data["splits"]


def test_splits_are_disjoint_by_document_and_follow_the_seed():
    docs = [f"document {i}" for i in range(1000)]
    splits = corpus.split_documents(docs)
    assert sorted(sum(splits.values(), [])) == sorted(docs)
    assert {k: len(v) for k, v in splits.items()} == {"train": 900, "validation": 50, "test": 50}
    assert corpus.split_documents(docs) == splits
    assert corpus.split_documents(docs, seed=1) != splits
    for docs_in_split in splits.values():
        assert docs_in_split == sorted(docs_in_split, key=docs.index), "a split keeps the documents' order"
    small = corpus.split_documents(["a", "b", "c"])
    assert all(len(v) == 1 for v in small.values())


def test_the_cache_is_reused(built, monkeypatch):
    root, data = built
    monkeypatch.setenv(cache.CACHE_ENV, str(root))
    monkeypatch.setattr(corpus, "python_docs_documents", lambda: pytest.fail("rebuilt instead of reading the cache"))
    assert corpus.load_corpus("validation") == data["splits"]["validation"]
    assert corpus.corpus_cache_path().is_file()
    summary = corpus.corpus_summary()
    assert summary["splits"]["validation"]["documents"] == len(data["splits"]["validation"])
    assert summary["total"]["bytes"] >= summary["total"]["characters"] > 1_000_000
    assert "PSF" in summary["licence"]


def test_a_shared_read_only_cache_is_read_first_and_never_written(built, cache_root, monkeypatch):
    """What the batch grader lends a notebook's confined kernel: its own cache, read-only."""
    shared, data = built
    monkeypatch.setenv(cache.SHARED_ENV, str(shared))
    monkeypatch.setattr(corpus, "python_docs_documents", lambda: pytest.fail("rebuilt instead of reading the shared cache"))
    shared.chmod(0o555)
    try:
        assert corpus.corpus_cache_path().is_relative_to(shared)
        assert corpus.load_corpus("validation") == data["splits"]["validation"]  # no lock taken, nothing written
        assert cache.cache_entry("corpus", "missing.json") == cache_root / "corpus" / "missing.json"
    finally:
        shared.chmod(0o755)
    assert not list(cache_root.rglob("*.json")) and not list(shared.glob(".*.lock"))


def test_a_chapter_copied_from_the_reference_by_the_grader_is_keyed_as_the_reference(tmp_path, monkeypatch):
    """grading.kernel writes finished chapters with their hashes into course_lib/reference_copies.json;
    a file that differs from its listed hash (a student's edit) is keyed by its own hash."""
    from course_lib import exercises

    package = tmp_path / "course_lib"
    package.mkdir()
    for name in ("__init__.py", "exercises.py"):
        (package / name).write_text((ROOT / "course_lib" / name).read_text())
    (package / "numerics.py").write_text("# the reference, as the grader wrote it\n")
    (package / "tokenization.py").write_text("# a student's own\n")
    digest = hashlib.sha256(b"# the reference, as the grader wrote it\n").hexdigest()
    (package / exercises.REFERENCE_COPIES).write_text(json.dumps({"numerics": digest, "tokenization": digest}))
    code = ("from course_lib import exercises; "
            "print(exercises.implementation('numerics'), exercises.implementation('tokenization'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_LIB")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True,
                         env={**env, "PYTHONPATH": str(tmp_path)})
    own = hashlib.sha256(b"# a student's own\n").hexdigest()[:16]
    assert out.stdout.split() == ["reference", own]
    monkeypatch.setenv(exercises.MODE_ENV, "solution")
    monkeypatch.setenv(exercises.STUDENT_MODULES_ENV, "")
    assert exercises.implementation("numerics") == "reference"


def test_building_imports_no_standard_library_module():
    code = ("import sys; before = set(sys.modules); from course_lib import corpus; "
            "corpus.python_docs_documents(); new = set(sys.modules) - before; "
            "print(sorted(m for m in new if m.split('.')[0] in ('antigravity', 'this', 'tkinter', 'turtle', "
            "'webbrowser', 'idlelib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_local_file_gives_one_document_per_paragraph(cache_root, tmp_path):
    path = tmp_path / "book.txt"
    paragraphs = [f"Paragraph {i}.\nIts second line." for i in range(40)]
    path.write_text("\n\n".join(paragraphs) + "\n\n  \n\n")
    splits = {name: corpus.load_corpus(name, source=str(path)) for name in corpus.SPLITS}
    assert sorted(sum(splits.values(), [])) == sorted(paragraphs)
    assert len(splits["validation"]) == len(splits["test"]) == 2
    path.write_text("Only one paragraph now, and another.\n\nSecond.\n\nThird.")
    assert sorted(sum((corpus.load_corpus(n, source=path) for n in corpus.SPLITS), [])) == \
        ["Only one paragraph now, and another.", "Second.", "Third."], "a changed file must rebuild"


def test_a_local_folder_gives_one_document_per_file(cache_root, tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / "sub" / f"{i}.txt").write_text(f"File {i}.\n\nStill file {i}.\n")
    (folder / ".hidden").write_text("not a document")
    docs = sum((corpus.load_corpus(n, source=str(folder)) for n in corpus.SPLITS), [])
    assert sorted(docs) == [f"File {i}.\n\nStill file {i}." for i in range(5)]
    summary = corpus.corpus_summary(source=str(folder))
    assert summary["total"]["documents"] == 5 and summary["sources"] == [str(folder)]


def test_bad_arguments_are_named(cache_root, tmp_path):
    with pytest.raises(ValueError, match="split"):
        corpus.load_corpus("dev")
    with pytest.raises(TypeError, match="source"):
        corpus.load_corpus("train", source=42)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no text"):
        corpus.load_corpus("train", source=str(empty))


def test_a_damaged_cache_file_is_rebuilt(cache_root, tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n\ntwo\n\nthree")
    corpus.load_corpus("train", source=str(path))
    corpus.corpus_cache_path(str(path)).write_text("{not json")
    assert len(corpus.load_corpus("train", source=str(path))) == 1
    assert json.loads(corpus.corpus_cache_path(str(path)).read_text())["splits"]["train"]
