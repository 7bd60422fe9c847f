"""The course instruction data set: five task families with verifiable answers, built offline.

Chapters 7-10 fine-tune, align and evaluate the course model on it, so it is made the way the course
corpus is made (:mod:`course_lib.corpus`): by code, deterministically, without downloads, cached under
the course cache and keyed by the code and settings that made it. It does not use the exercises of
Chapter 6 (:mod:`course_lib.instruct`): every mode builds the same data, whatever state a student's
exercises are in. Its cleaning steps use the structure the generators know and one library,
``datasketch``; the exercises implement the same ideas from scratch, and the book compares them.

**Families.** Each family draws *items* (the thing asked about) and phrases each with one of several
paraphrase *templates*:

- ``arithmetic``: sums and differences of numbers below 100 (no negative results) and products from
  the 2-12 times table; "What is 37 plus 45?" -> ``82``.
- ``string``: a transform of a word of the course corpus: reverse it, write it in capitals, count its
  letters, give its first letter; "Reverse the word \"parser\"." -> ``resrap``.
- ``sorting``: three to six numbers below 100, in the Alpaca ``input`` field, sorted up or down;
  "Sort these numbers in ascending order." + ``42, 7, 19`` -> ``7, 19, 42``.
- ``stdlib``: which standard-library module defines a public function or class, for names that
  exactly one module of the course corpus defines (read from the standard library's source with
  :mod:`ast`, as the corpus is); "Which standard library module documents `urlsplit`?" ->
  ``urllib.parse``.
- ``naming``: whether such a name is a class or a function; "Is `HTTPServer` a class or a function?"
  -> ``class``. The one family the CPU course model learns in a few minutes (Chapter 7): PEP 8's
  naming convention (CapWords for classes) answers 94 % of it from the name's spelling alone, a rule
  that needs no arithmetic and no memory of the item, where the other families need skills a 4M
  model does not reach on a CPU budget. (Copying from the prompt is not such a skill: the
  pretrained course model shows no in-context copying yet.)

Every example also carries a short worked ``rationale`` (for chain-of-thought prompts) and its
``group``: the item, written canonically (``37+45`` and ``45+37`` are one group; so are the numbers
of a list in any order). Paraphrases and reorderings of one item share a group.

**Cleaning** (counts per family in :func:`data_card`): the generators draw items *with* replacement,
as a real generator does, so the raw stream repeats itself. (1) *Exact duplicates*: the same item in
the same phrasing (same text) is kept once. (2) *Paraphrases*: an item already kept in another
phrasing is dropped, so no item is seen twice. (3) *Split by group*: each group gets a stable hash
(SHA-256 of the seed and the group); per family the :data:`TEST_SIZE` groups with the smallest hashes
form ``test``, the next :data:`VALIDATION_SIZE` ``validation``, the rest ``train``. A paraphrase of
a test item therefore never reaches training, and adding items to a family never moves an old one.
(4) *Decontamination*: any training or validation example whose MinHash (``datasketch``, word
3-grams of the normalised text, :data:`MINHASH_PERM` permutations) makes it a candidate near
duplicate of a test example of its family at estimated Jaccard similarity >= :data:`DECONTAMINATION_THRESHOLD`,
and whose exact Jaccard similarity is at least that, is removed.

**Formats.** A row holds the Alpaca fields ``instruction``, ``input`` (``""`` except for ``sorting``)
and ``output``; the same example as chat ``messages`` (a user turn: the instruction, then a blank line
and the input when there is one; an assistant turn: the output); and ``id``, ``family``, ``group``,
``template`` (which paraphrase) and ``rationale``. :func:`instruction_dataset` returns a
``datasets.Dataset``; :func:`check_answer` says whether a model's answer is right.

**Licence.** The generated examples are the course's own (MIT, like its code). The ``string`` words
and ``stdlib`` names and module names come from CPython's documentation and source, distributed
under the PSF License Agreement (version 2).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import random
import re
import sys
import sysconfig
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Sequence

from course_lib.cache import building, cache_entry, cache_key, read_json, write_atomic

FAMILIES = ("arithmetic", "string", "sorting", "stdlib", "naming")
SPLITS = ("train", "validation", "test")
TEST_SIZE = 200        # groups (= examples) per family in the test split
VALIDATION_SIZE = 100  # groups per family in the validation split
RAW_SIZE = 1600        # raw draws per family before cleaning
SEED = 6
MINHASH_PERM = 128
SHINGLE_SIZE = 3
DECONTAMINATION_THRESHOLD = 0.8
# Bump when what the generators write or how the data is cleaned changes: cached copies are rebuilt.
DATA_VERSION = 2  # 2: the naming family


# -- text normalisation and shingles (also used by the exercises of Chapter 6) -----------------------
def normalize_text(text: str) -> str:
    """The form of ``text`` that deduplication compares: Unicode NFKC (``"ﬁ"`` -> ``"fi"``, full-width
    digits -> ASCII), case-folded (``"Straße"`` -> ``"strasse"``), every run of whitespace one space,
    no leading or trailing space. Punctuation stays. Only for comparing: never train on it."""
    if type(text) is not str:
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def word_shingles(text: str, n: int) -> list[str]:
    """The distinct word ``n``-grams of ``normalize_text(text)``, each written as its words joined by
    one space, in order of first occurrence. A text of fewer than ``n`` words (but at least one) is
    one shingle, all its words; an empty or blank text has none."""
    if type(n) is not int or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    words = normalize_text(text).split()
    if not words:
        return []
    if len(words) < n:
        return [" ".join(words)]
    return list(dict.fromkeys(" ".join(words[i:i + n]) for i in range(len(words) - n + 1)))


def jaccard(a, b) -> float:
    """Exact Jaccard similarity ``|a & b| / |a | b|`` of two collections taken as sets (1.0 for two
    empty ones)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a or b else 1.0


# -- the families ---------------------------------------------------------------------------------
ARITHMETIC_TEMPLATES = {
    "+": ["What is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?", "Compute {a} + {b}."],
    "-": ["What is {a} minus {b}?", "Subtract {b} from {a}.", "What is the difference {a} - {b}?",
          "Compute {a} - {b}."],
    "*": ["What is {a} times {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?",
          "Compute {a} * {b}."],
}
STRING_TEMPLATES = {
    "reverse": ['Reverse the word "{w}".', 'Write "{w}" backwards.', 'Spell the word "{w}" in reverse order.'],
    "upper": ['Write "{w}" in capital letters.', 'Convert "{w}" to upper case.', 'Capitalise every letter of "{w}".'],
    "length": ['How many letters are in the word "{w}"?', 'Count the letters of "{w}".',
               'What is the length of the word "{w}"?'],
    "first": ['What is the first letter of "{w}"?', 'Which letter does "{w}" start with?',
              'Give the first letter of the word "{w}".'],
}
SORTING_TEMPLATES = {
    "ascending": ["Sort these numbers in ascending order.", "Arrange the numbers from smallest to largest.",
                  "Put these numbers in increasing order."],
    "descending": ["Sort these numbers in descending order.", "Arrange the numbers from largest to smallest.",
                   "Put these numbers in decreasing order."],
}
STDLIB_TEMPLATES = ["Which standard library module documents `{name}`?",
                    "In which module of the Python standard library is `{name}` defined?",
                    "Which module do you import to use `{name}`?",
                    "`{name}` belongs to which standard library module?"]
NAMING_TEMPLATES = ["Is `{name}` a class or a function?",
                    "In the Python standard library, is `{name}` a function or a class?",
                    "Does `{name}` name a class or a function?",
                    "`{name}`: class or function?"]


def _spelled(word: str) -> str:
    return "-".join(word)


def _arithmetic(rng: random.Random) -> dict:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        result = a * b
        tens, ones = divmod(b, 10)
        steps = (f"{a} * {b} = {a} * 10 + {a} * {ones} = {a * 10} + {a * ones} = {result}." if tens
                 else f"{a} * {b} is {b} times {a}: {' + '.join([str(a)] * b)} = {result}.")
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if op == "-" and a < b:
            a, b = b, a
        result = a + b if op == "+" else a - b
        tens, ones = b - b % 10, b % 10
        middle = a + tens if op == "+" else a - tens
        steps = (f"{a} {op} {tens} = {middle}, and {middle} {op} {ones} = {result}." if tens and ones
                 else f"{a} {op} {b} = {result}.")
    template = rng.randrange(len(ARITHMETIC_TEMPLATES[op]))
    canonical = f"{min(a, b)}{op}{max(a, b)}" if op in "+*" else f"{a}{op}{b}"
    return {"group": f"arithmetic:{canonical}", "template": template,
            "instruction": ARITHMETIC_TEMPLATES[op][template].format(a=a, b=b), "input": "",
            "output": str(result), "rationale": steps}


def _string(rng: random.Random, words: Sequence[str]) -> dict:
    transform = rng.choice(sorted(STRING_TEMPLATES))
    word = rng.choice(words)
    output = {"reverse": word[::-1], "upper": word.upper(), "length": str(len(word)), "first": word[0]}[transform]
    rationale = {
        "reverse": f"The letters of {word} are {_spelled(word)}; backwards they are {_spelled(word[::-1])}.",
        "upper": f"The letters of {word} are {_spelled(word)}; in capitals they are {_spelled(word.upper())}.",
        "length": f"The letters of {word} are {_spelled(word)}: that is {len(word)} letters.",
        "first": f"The letters of {word} are {_spelled(word)}; the first one is {word[0]}.",
    }[transform]
    template = rng.randrange(len(STRING_TEMPLATES[transform]))
    return {"group": f"string:{transform}:{word}", "template": template,
            "instruction": STRING_TEMPLATES[transform][template].format(w=word), "input": "",
            "output": output, "rationale": rationale}


def _sorting(rng: random.Random) -> dict:
    order = rng.choice(sorted(SORTING_TEMPLATES))
    numbers = rng.sample(range(100), rng.randint(3, 6))
    ordered = sorted(numbers, reverse=order == "descending")
    first = "smallest" if order == "ascending" else "largest"
    template = rng.randrange(len(SORTING_TEMPLATES[order]))
    return {"group": f"sorting:{order}:{','.join(map(str, sorted(numbers)))}", "template": template,
            "instruction": SORTING_TEMPLATES[order][template], "input": ", ".join(map(str, numbers)),
            "output": ", ".join(map(str, ordered)),
            "rationale": f"The {first} is {ordered[0]}, then " + ", then ".join(map(str, ordered[1:])) + "."}


def _name_question(rng: random.Random, records: list[dict], family: str) -> dict:
    """A question about a standard-library name: which module defines it (``stdlib``), or whether it is
    a class or a function (``naming``)."""
    record = rng.choice(records)
    templates = STDLIB_TEMPLATES if family == "stdlib" else NAMING_TEMPLATES
    template = rng.randrange(len(templates))
    name, module = record["name"], record["module"]
    kind = "class" if record["kind"] == "class" else "function"
    return {"group": f"{family}:{name}", "template": template, "instruction": templates[template].format(name=name),
            "input": "", "output": module if family == "stdlib" else kind,
            "rationale": f"`{name}` is a {kind} defined in the module {module}."}


@functools.lru_cache(maxsize=None)
def corpus_words(min_len: int = 3, max_len: int = 8, top: int = 2000, source: str | None = None) -> tuple[str, ...]:
    """The ``top`` most frequent lower-case ASCII words of ``min_len`` to ``max_len`` letters in the
    ``train`` split of the course corpus, most frequent first (ties alphabetically); read once per process."""
    from course_lib.corpus import load_corpus

    counts = Counter(w for doc in load_corpus("train", source) for w in re.findall(r"\b[a-z]+\b", doc)
                     if min_len <= len(w) <= max_len)
    return tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])


@functools.lru_cache(maxsize=None)
def _stdlib_records() -> tuple[tuple[str, str, str], ...]:
    """(name, module, kind) of :func:`stdlib_records`, read once per process."""
    from course_lib.corpus import SKIPPED_DIRS, stdlib_source_files

    root = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, list[tuple[str, str]]] = {}
    for path in stdlib_source_files():
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or any(p.startswith("_") or p in SKIPPED_DIRS for p in parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue
        module = ".".join(parts)
        for node in tree.body:
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and not node.name.startswith("_") and ast.get_docstring(node)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                found.setdefault(node.name, []).append((module, kind))
    return tuple((name, places[0][0], places[0][1]) for name, places in sorted(found.items())
                 if len({m for m, _ in places}) == 1)


def stdlib_records() -> list[dict]:
    """``{"name", "module", "kind"}`` for every public top-level function and class with a docstring in
    the standard-library files the course corpus reads, whose name no other of those modules
    defines; sorted by name. ``kind`` is ``"function"`` or ``"class"``."""
    return [{"name": name, "module": module, "kind": kind} for name, module, kind in _stdlib_records()]


def raw_examples(family: str, n: int = RAW_SIZE, seed: int = SEED, source: str | None = None) -> list[dict]:
    """``n`` examples of ``family`` straight from its generator, before any cleaning: items are drawn
    with replacement, so the list holds exact repeats and paraphrases of one item. Each is a dict with
    ``group``, ``template``, ``instruction``, ``input``, ``output`` and ``rationale``. The same
    arguments give the same list on every machine with the same Python (``random.Random(seed)``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if type(n) is not int or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = random.Random(f"{seed}:{family}")
    if family == "arithmetic":
        return [_arithmetic(rng) for _ in range(n)]
    if family == "sorting":
        return [_sorting(rng) for _ in range(n)]
    if family == "string":
        words = corpus_words(source=source)
        return [_string(rng, words) for _ in range(n)]
    records = stdlib_records()
    return [_name_question(rng, records, family) for _ in range(n)]


def example_text(example: dict) -> str:
    """The text an example shows a model, for comparing examples: instruction, input and output."""
    return "\n".join(part for part in (example["instruction"], example["input"], example["output"]) if part)


def user_content(instruction: str, input: str = "") -> str:
    """The user turn of an Alpaca record: the instruction, then a blank line and the input if any."""
    return f"{instruction}\n\n{input}" if input.strip() else instruction


# -- cleaning and splitting -----------------------------------------------------------------------
def _group_hash(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode("utf-8")).hexdigest()


def _clean_family(raw: list[dict], seed: int) -> tuple[dict[str, list[dict]], dict]:
    """One family's raw examples -> its three splits and the counts of what each step removed."""
    seen_texts, kept_groups, unique = set(), {}, []
    exact = paraphrases = 0
    for example in raw:
        text = normalize_text(example_text(example))
        if text in seen_texts:
            exact += 1
            continue
        seen_texts.add(text)
        if example["group"] in kept_groups:
            paraphrases += 1
            continue
        kept_groups[example["group"]] = example
        unique.append(example)
    order = sorted(kept_groups, key=lambda g: _group_hash(g, seed))
    if len(order) <= TEST_SIZE + VALIDATION_SIZE:
        raise ValueError(f"only {len(order)} distinct items: too few for {TEST_SIZE} test and "
                         f"{VALIDATION_SIZE} validation examples")
    role = {g: "test" for g in order[:TEST_SIZE]}
    role.update({g: "validation" for g in order[TEST_SIZE:TEST_SIZE + VALIDATION_SIZE]})
    splits = {name: [e for e in unique if role.get(e["group"], "train") == name] for name in SPLITS}
    splits, contaminated = _decontaminate(splits)
    counts = {"raw": len(raw), "exact_duplicates": exact, "paraphrases": paraphrases,
              "contaminated": contaminated, **{name: len(rows) for name, rows in splits.items()}}
    return splits, counts


def _decontaminate(splits: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], int]:
    """Remove training and validation examples that are near duplicates of a test example (datasketch
    MinHash LSH finds the candidates, the exact Jaccard similarity of the shingles decides)."""
    from datasketch import MinHash, MinHashLSH

    def signature(shingles):
        m = MinHash(num_perm=MINHASH_PERM, seed=SEED)
        m.update_batch([s.encode("utf-8") for s in shingles])
        return m

    lsh = MinHashLSH(threshold=DECONTAMINATION_THRESHOLD, num_perm=MINHASH_PERM)
    test_shingles = []
    for i, example in enumerate(splits["test"]):
        shingles = word_shingles(example_text(example), SHINGLE_SIZE)
        test_shingles.append(shingles)
        lsh.insert(i, signature(shingles))
    removed = 0
    cleaned = {"test": splits["test"]}
    for name in ("train", "validation"):
        cleaned[name] = []
        for example in splits[name]:
            shingles = word_shingles(example_text(example), SHINGLE_SIZE)
            hits = [j for j in lsh.query(signature(shingles))
                    if jaccard(shingles, test_shingles[j]) >= DECONTAMINATION_THRESHOLD]
            if hits:
                removed += 1
            else:
                cleaned[name].append(example)
    return cleaned, removed


def _row(example: dict, family: str, split: str, index: int) -> dict:
    return {"id": f"{family}-{split}-{index:05d}", "family": family, **example,
            "messages": [{"role": "user", "content": user_content(example["instruction"], example["input"])},
                         {"role": "assistant", "content": example["output"]}]}


def instruction_data_path(source: str | None = None) -> Path:
    """Where the built data set is (or will be) cached."""
    from course_lib.corpus import corpus_cache_path

    settings = [DATA_VERSION, SEED, RAW_SIZE, TEST_SIZE, VALIDATION_SIZE, MINHASH_PERM, SHINGLE_SIZE,
                DECONTAMINATION_THRESHOLD, sys.version.split()[0]]
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return cache_entry("instruct", f"instructions-{cache_key(settings, code, corpus_cache_path(source).name)}.json")


def build_instruction_data(source: str | None = None) -> dict:
    """``{"card": data card, "splits": {split: [row, ...]}}``, built once and cached (a few seconds).

    ``source`` is the corpus the ``string`` family takes its words from (see
    :func:`course_lib.corpus.load_corpus`); ``None`` for the built-in corpus.
    """
    path = instruction_data_path(source)
    with building(path):  # one builder at a time (the book and the tests run side by side)
        cached = read_json(path)
        if cached is not None:
            return cached
        splits = {name: [] for name in SPLITS}
        counts = {}
        for family in FAMILIES:
            family_splits, counts[family] = _clean_family(raw_examples(family, RAW_SIZE, SEED, source), SEED)
            for name in SPLITS:
                splits[name] += [_row(e, family, name, i) for i, e in enumerate(family_splits[name])]
        card = {
            "name": "course-instructions",
            "version": DATA_VERSION,
            "python": sys.version.split()[0],
            "families": {"arithmetic": "sums, differences (0-99) and products (2-12) of integers",
                         "string": "reverse, capitalise, count the letters of, or give the first letter of a word "
                                   "of the course corpus",
                         "sorting": "sort 3-6 integers below 100 up or down (the numbers are the Alpaca input)",
                         "stdlib": "name the standard-library module that defines a function or class",
                         "naming": "say whether a standard-library name is a class or a function"},
            "counts": counts,
            "sizes": {name: len(rows) for name, rows in splits.items()},
            "settings": {"seed": SEED, "raw_per_family": RAW_SIZE, "test_per_family": TEST_SIZE,
                         "validation_per_family": VALIDATION_SIZE, "minhash_permutations": MINHASH_PERM,
                         "shingle_words": SHINGLE_SIZE, "decontamination_threshold": DECONTAMINATION_THRESHOLD},
            "licence": "generated examples: MIT (the course's code licence); words, names and module names from "
                       "CPython's documentation and source: PSF License Agreement v2",
        }
        data = {"card": card, "splits": splits}
        write_atomic(path, json.dumps(data, ensure_ascii=False))
        return data


def instruction_dataset(split: str = "train", family: str | None = None, source: str | None = None):
    """One split of the course instruction data set as a ``datasets.Dataset``, built on first use.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"`` (disjoint by item; ``test`` holds
            :data:`TEST_SIZE` examples of each family).
        family: one of :data:`FAMILIES`, or ``None`` for all of them (in that order).
        source: the corpus of the ``string`` family's words (default: the built-in one).

    Returns:
        A ``datasets.Dataset`` with columns ``id``, ``family``, ``group``, ``template``,
        ``instruction``, ``input``, ``output``, ``rationale`` and ``messages`` (a user and an
        assistant turn, ``[{"role": ..., "content": ...}, ...]``, which TRL's trainers take as
        conversational data).
    """
    from datasets import Dataset

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    rows = build_instruction_data(source)["splits"][split]
    return Dataset.from_list([r for r in rows if family is None or r["family"] == family])


def data_card(source: str | None = None) -> dict:
    """The data card: what each family is, sizes per split, what each cleaning step removed per family,
    the settings and the licence."""
    return build_instruction_data(source)["card"]


# -- checking answers -----------------------------------------------------------------------------
def _clean_answer(answer: str) -> str:
    answer = answer.strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    return answer.strip("`\"'").strip()


def _as_int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def _as_int_list(text: str) -> list[int] | None:
    parts = [p.strip() for p in text.split(",")]
    values = [_as_int(p) for p in parts]
    return None if any(v is None for v in values) else values


def check_answer(family: str, example: dict, answer: str) -> bool:
    """Whether ``answer`` (a model's reply, e.g. the assistant turn it generated) is right for
    ``example`` (a row of :func:`instruction_dataset`, or of :func:`raw_examples`).

    Surrounding whitespace, a final period and quotes or backticks around the whole answer are
    ignored. Then: ``arithmetic`` and the ``length`` questions of ``string`` need an integer equal to
    the answer (``"82"``, ``"+82"``); ``sorting`` needs the same integers in the same order,
    comma-separated (spaces free); ``string`` and ``stdlib`` need exactly the expected text
    (case-sensitive: ``"RESRAP"`` is not ``"resrap"``). An answer with anything more (``"The answer is
    82"``) is wrong: the fine-tuned model is asked for the answer alone.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if type(answer) is not str:
        raise TypeError(f"answer must be a str, got {type(answer).__name__}")
    expected, given = example["output"], _clean_answer(answer)
    if family == "sorting":
        return _as_int_list(given) == _as_int_list(expected)
    if family == "arithmetic" or (family == "string" and expected.isdigit()):
        return _as_int(given) is not None and _as_int(given) == int(expected)
    return given == expected
