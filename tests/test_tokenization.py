"""Chapter 1 graded tests (public): word and GPT-2 pre-tokenization, byte-level BPE training,
encoding, decoding, streaming and export to ``tokenizer.json``.

The references are outside the course: ``tokenizers`` (its GPT-2 pre-tokenizer, its BPE trainer and
``Tokenizer.from_str``), ``tiktoken`` built from the same ranks and pattern, ``transformers``, and a
brute-force BPE trainer written here that recounts every pair after every merge. The tests of
encoding, decoding and streaming use merges trained by ``tokenizers`` (not by your ``train_bpe``),
so a mistake in one exercise is not charged again in another. Nothing depends on the exact text of
the course corpus, which differs between Python versions.

Each exercise's contract (its docstring and the module's conventions), clause by clause, with the
public tests that check it (``test_`` dropped):

1.1 ``word_tokenize``
  - maximal runs of ``\\w``, or one other non-space character; whitespace dropped:
    word_tokenize_hand_examples, word_tokenize_follows_its_definition_on_any_text
  - ``\\w`` as Python's ``re`` means it (combining marks, joiners are not): word_tokenize_uses_the_word_characters_of_re
  - a ``list`` of ``str``, ``[]`` for blank text: word_tokenize_returns_a_list_of_str, word_tokenize_hand_examples

1.2 ``pretokenize``
  - GPT-2 pre-tokens (``regex``), joined they give the text back: pretokenize_hand_examples,
    pretokenize_matches_tokenizers_on_corpus_text, pretokenize_matches_tokenizers_on_any_text
  - special tokens whole, found leftmost first: pretokenize_keeps_special_tokens_whole,
    pretokenize_finds_special_tokens_leftmost_first
  - longest first where two start at one place; escaped: pretokenize_prefers_the_longest_special_token
  - text that ends inside a special token is ordinary text: pretokenize_hand_examples
  - ``special_tokens`` as a list or a tuple, the caller's list unchanged:
    pretokenize_takes_a_tuple_and_leaves_the_callers_list_alone
  - a ``list`` of ``str``: pretokenize_returns_a_list_of_str

1.3 ``train_bpe``
  - most frequent pair, counted inside pre-tokens and weighted: train_bpe_on_the_classic_example,
    train_bpe_matches_brute_force_on_random_corpora, train_bpe_agrees_with_tokenizers_until_the_first_tie
  - ties to the greatest (left, right) tuple: train_bpe_on_the_classic_example,
    train_bpe_breaks_ties_by_the_pair_not_by_its_concatenation
  - documents pre-tokenized apart; merges stay inside pre-tokens: train_bpe_keeps_documents_apart,
    train_bpe_merges_stay_inside_pre_tokens
  - special tokens cut out of training, added last, in the given order, once each:
    train_bpe_drops_special_tokens_from_the_training_text, train_bpe_adds_each_special_token_once_in_the_given_order
  - ``len(vocab) == vocab_size``, or shorter when no pair is left (also no document, no room):
    train_bpe_drops_special_tokens_from_the_training_text, train_bpe_stops_when_no_pair_is_left,
    train_bpe_with_no_merge_to_make
  - ``(vocab, merges)``: a tuple of a list of bytes and a list of (bytes, bytes) tuples; inputs unchanged:
    train_bpe_returns_lists_of_bytes_and_pairs_and_leaves_its_inputs_alone

1.4 ``bpe_encode``
  - merges by rank inside each pre-token, as tiktoken: bpe_encode_applies_merges_by_rank,
    bpe_encode_does_not_merge_across_pre_tokens, bpe_encode_matches_tiktoken_on_corpus_text,
    bpe_encode_matches_tiktoken_on_any_text
  - a special token is one id, its place in vocab, only when named:
    bpe_encode_special_tokens_are_single_ids_only_when_asked
  - ``special_tokens`` a subset of vocab's, in any order, a tuple: bpe_encode_with_special_tokens_a_subset_or_in_another_order
  - special tokens that are prefixes of one another; text ending inside one; a special token whose
    text is also an ordinary token: bpe_encode_special_tokens_that_are_prefixes_of_one_another
  - the merges passed in (no state kept from another call): bpe_encode_uses_the_merges_it_is_given
  - a ``list`` of ``int``; inputs unchanged: bpe_encode_returns_a_list_of_int_and_leaves_its_inputs_alone

1.5 ``bpe_decode``
  - joined bytes decoded as a whole; inverse of encoding: bpe_decode_inverts_encoding_on_any_text
  - invalid UTF-8 becomes U+FFFD, no exception: bpe_decode_replaces_invalid_utf8
  - every id is a token (id 0 too); ids as a tuple; a ``str``: bpe_decode_keeps_every_byte_including_zero
  - the vocab passed in: bpe_decode_reads_the_vocab_it_is_given

1.6 ``encode_chunk``
  - the steps' ids are those of the whole text, wherever the cuts fall (word, spaces, special token, end
    of stream inside one): encode_chunk_gives_the_ids_of_the_whole_text,
    encode_chunk_streams_corpus_text_in_bounded_memory
  - special tokens that are prefixes of or overlap one another:
    encode_chunk_with_special_tokens_that_are_prefixes_of_one_another,
    encode_chunk_with_overlapping_special_tokens_and_any_cuts
  - ``special_tokens`` a subset, in another order: encode_chunk_with_special_tokens_a_subset_or_in_another_order
  - bounded buffer: encode_chunk_streams_corpus_text_in_bounded_memory
  - ``chunk=None`` encodes everything, buffer ``""``: encode_chunk_at_the_end_of_an_empty_stream (and ``stream``)
  - a tuple ``(list of int, str)``: encode_chunk_returns_a_tuple_of_ids_and_buffer

1.7 ``to_tokenizer_json``
  - a ``str`` that ``Tokenizer.from_str`` loads, same ids as ``bpe_encode``, decodes back:
    tokenizer_json_loads_and_gives_the_same_ids_on_corpus_text, tokenizer_json_gives_the_same_ids_on_any_text
  - ``special_tokens`` a subset of vocab's, in any order, or none; every id decodes:
    tokenizer_json_with_special_tokens_a_subset_or_in_another_order
  - added tokens marked special: tokenizer_json_marks_special_tokens_as_special,
    tokenizer_json_works_in_transformers
  - works in ``transformers`` with the special tokens at their ids: tokenizer_json_works_in_transformers
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from course_lib.corpus import load_corpus
from course_lib.tokenization import GPT2_SPLIT_PATTERN, bytes_to_unicode
from grading.expect import assert_unchanged

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|pad|>", "<|im_start|>", "<|im_end|>"]

# Hypothesis: a fixed, bounded number of examples, the same ones on every run.
# (@given tests take keyword-only arguments: hypothesis probes a first positional one with hasattr.)
FEW = settings(max_examples=40, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Any character that Python's Unicode tables know (no surrogates, no unassigned code points, whose
# classes may differ between the regex engines of `regex`, `tokenizers` and `tiktoken`).
ANY_CHAR = st.characters(exclude_categories=("Cs", "Cn"))
PIECES = ["the", " the", " ", "  ", "\n", "\n\n", "\t", " \n ", "don't", "I'm", " 'll", "é", "naïve", "日本語",
          "😀", "👍🏽", "123", " 4567", "3.14", "!!", " ...", "--", "(", ")", "_", "Ω", "ß", "\u00a0", "\u3000"]
TEXT = st.one_of(st.text(ANY_CHAR, max_size=40),
                 st.lists(st.one_of(st.sampled_from(PIECES), st.text(ANY_CHAR, max_size=3)), max_size=25)
                 .map("".join))


def with_specials(draw_text=TEXT, specials=(EOT, "<|pad|>")):
    """Text with special tokens between (and inside) ordinary pieces."""
    return st.lists(st.one_of(draw_text, st.sampled_from(list(specials))), max_size=6).map("".join)


# -- references ----------------------------------------------------------------------------------
def split_special(text: str, special_tokens) -> list[tuple[str, bool]]:
    """(segment, is_special) parts: at each position the longest special token that starts there."""
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    parts, plain, i = [], "", 0
    while i < len(text):
        token = next((t for t in ordered if text.startswith(t, i)), None)
        if token is None:
            plain += text[i]
            i += 1
            continue
        if plain:
            parts.append((plain, False))
            plain = ""
        parts.append((token, True))
        i += len(token)
    if plain:
        parts.append((plain, False))
    return parts


def tokenizers_pretokenize(text: str) -> list[str]:
    """GPT-2 pre-tokens by Hugging Face ``tokenizers`` (its own GPT-2 regex, in Oniguruma)."""
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return [text[start:end] for _, (start, end) in splitter.pre_tokenize_str(text)]


def reference_pretokenize(text: str, special_tokens=()) -> list[str]:
    pieces = []
    for segment, is_special in split_special(text, special_tokens):
        pieces += [segment] if is_special else tokenizers_pretokenize(segment)
    return pieces


def word_frequencies(documents, special_tokens=()) -> Counter:
    """Each pre-token (special tokens dropped) as a tuple of single bytes, with its frequency."""
    words = Counter()
    for doc in documents:
        for segment, is_special in split_special(doc, special_tokens):
            if not is_special:
                for piece in regex.findall(GPT2_SPLIT_PATTERN, segment):
                    words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    return words


def merge_word(word: tuple, pair: tuple) -> tuple:
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def brute_force_bpe(documents, vocab_size, special_tokens=(), stop_at_tie=False):
    """Obviously correct BPE: recount every pair after every merge. Returns (merges, tied), where
    ``tied[k]`` says whether merge ``k`` won a tie (another pair had the same count); with
    ``stop_at_tie`` the merges end before the first tie."""
    n_special = len(set(special_tokens))
    words = word_frequencies(documents, special_tokens)
    merges, tied = [], []
    while 256 + len(merges) + n_special < vocab_size:
        counts = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break
        best = max(counts, key=lambda pair: (counts[pair], pair))  # most frequent, then greatest
        is_tie = sum(c == counts[best] for c in counts.values()) > 1
        if is_tie and stop_at_tie:
            break
        merges.append(best)
        tied.append(is_tie)
        merged = Counter()
        for word, n in words.items():
            merged[merge_word(word, best)] += n
        words = merged
    return merges, tied


def layout(merges, special_tokens=()):
    """The vocabulary that the chapter's layout gives these merges."""
    return ([bytes([b]) for b in range(256)] + [a + b for a, b in merges]
            + [t.encode("utf-8") for t in dict.fromkeys(special_tokens)])


U2B = {c: b for b, c in bytes_to_unicode().items()}


def tokenizers_bpe(documents, vocab_size, special_tokens=()):
    """Merges learned by the ``tokenizers`` BPE trainer on the same pre-tokens (its own tie-break)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(bytes(U2B[c] for c in part) for part in pair) for pair in merges]


@functools.lru_cache(maxsize=None)
def trained(vocab_size: int = 700, special_tokens: tuple = tuple(SPECIALS)):
    """(vocab, merges) trained by ``tokenizers`` on the validation split, in the chapter's layout."""
    merges = tokenizers_bpe(load_corpus("validation"), vocab_size, special_tokens)
    return layout(merges, special_tokens), merges


def tiktoken_encoding(vocab, merges, special_tokens=()) -> tiktoken.Encoding:
    n = 256 + len(merges)
    special_ids = {vocab[i].decode("utf-8"): i for i in range(n, len(vocab))}
    return tiktoken.Encoding(name="course-test", pat_str=GPT2_SPLIT_PATTERN,
                             mergeable_ranks={vocab[i]: i for i in range(n)},
                             special_tokens={t: special_ids[t] for t in special_tokens})


def tiktoken_ids(vocab, merges, text, special_tokens=()) -> list[int]:
    enc = tiktoken_encoding(vocab, merges, special_tokens)
    return enc.encode(text, allowed_special=set(special_tokens), disallowed_special=())


def corpus_text(n_chars: int = 20_000, split: str = "test", seed: int = 0) -> str:
    """About ``n_chars`` of corpus text: documents of ``split``, joined by special tokens."""
    docs = load_corpus(split)
    out, size = [], 0
    for doc in random.Random(seed).sample(docs, len(docs)):
        out.append(doc[:n_chars - size])
        size += len(out[-1])
        if size >= n_chars:
            break
    return EOT.join(out)


def first_difference(actual, expected) -> str:
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a != e:
            return f"first difference at index {i}: got {a!r}, expected {e!r}"
    return f"lengths differ: got {len(actual)} items, expected {len(expected)}"


def assert_same(actual, expected, what: str, hint: str = "") -> None:
    if isinstance(actual, tuple) and isinstance(expected, list):
        actual = list(actual)
    if actual != expected:
        raise AssertionError(f"{what}: {first_difference(actual, expected)}. {hint}".strip())


def reference_ids(vocab, merges, text, special_tokens=()) -> list[int]:
    """Ids by the contract: each special token found (leftmost, longest first) is its position among
    the special tokens at the end of ``vocab``; the text between them gets tiktoken's ids."""
    n = 256 + len(merges)
    special_id = {vocab[i].decode("utf-8"): i for i in range(n, len(vocab))}
    enc = tiktoken_encoding(vocab, merges)
    ids = []
    for segment, is_special in split_special(text, special_tokens):
        ids += [special_id[segment]] if is_special else enc.encode_ordinary(segment)
    return ids


def assert_list_of(value, item_type, what: str) -> None:
    """``value`` is a ``list`` (not a tuple, not a generator) whose items are exactly ``item_type``."""
    assert type(value) is list, f"{what} returned a {type(value).__name__}; the contract says a list"
    for item in value:
        assert type(item) is item_type, (f"{what} holds {item!r} of type {type(item).__name__}, expected "
                                         f"{item_type.__name__}")


CHAT = "<|im_start|>user\nWhat's 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|><|pad|><|pad|>" + EOT


# -- 1.1 word_tokenize ------------------------------------------------------------------------------
@pytest.mark.exercise("1.1")
@pytest.mark.parametrize("text, expected", [
    ("This is an example sentence.", ["This", "is", "an", "example", "sentence", "."]),  # the seed's example
    ("Don't panic... 42!", ["Don", "'", "t", "panic", ".", ".", ".", "42", "!"]),
    ("Hello, world!", ["Hello", ",", "world", "!"]),
    ("snake_case x2 3.14", ["snake_case", "x2", "3", ".", "14"]),
    ("naïve café—déjà vu", ["naïve", "café", "—", "déjà", "vu"]),
    ("  \n\t ", []),
    ("", []),
])
def test_word_tokenize_hand_examples(student, text, expected):
    assert_same(student.word_tokenize(text), expected, f"word_tokenize({text!r})",
                "A token is a maximal run of \\w characters or ONE other non-space character; "
                "whitespace is dropped, and punctuation marks are separate tokens.")


@pytest.mark.exercise("1.1")
@FEW
@given(text=TEXT)
def test_word_tokenize_follows_its_definition_on_any_text(*, student, text):
    assert_same(student.word_tokenize(text), re.findall(r"\w+|[^\w\s]", text), f"word_tokenize({text!r})",
                "Use Unicode \\w (letters of every script), one token per punctuation character.")


@pytest.mark.exercise("1.1")
@pytest.mark.parametrize("text, expected", [
    ("e\u0301t\u00e9", ["e", "\u0301", "t\u00e9"]),  # a combining accent is not a word character for re
    ("a\u200db", ["a", "\u200d", "b"]),               # nor is a zero-width joiner
    ("x\u00b2 \u0663!", ["x\u00b2", "\u0663", "!"]),   # a superscript 2 and an Arabic-Indic 3 are
])
def test_word_tokenize_uses_the_word_characters_of_re(student, text, expected):
    assert_same(student.word_tokenize(text), expected, f"word_tokenize({text!r})",
                "The definition uses re's \\w; the `regex` module's \\w also takes combining marks and joiners.")


@pytest.mark.exercise("1.1")
def test_word_tokenize_returns_a_list_of_str(student):
    for text in ("Don't panic... 42!", ""):
        assert_list_of(student.word_tokenize(text), str, f"word_tokenize({text!r})")


# -- 1.2 pretokenize --------------------------------------------------------------------------------
@pytest.mark.exercise("1.2")
@pytest.mark.parametrize("text, special_tokens, expected", [
    ("Hi  there<|endoftext|>!", [EOT], ["Hi", " ", " there", EOT, "!"]),
    ("I'm sure they'll say you've done it", [],
     ["I", "'m", " sure", " they", "'ll", " say", " you", "'ve", " done", " it"]),
    ("  hello world\n\n", [], [" ", " hello", " world", "\n\n"]),
    ("x = 1234 + 5;", [], ["x", " =", " 1234", " +", " 5", ";"]),
    ("<|pad|><|pad|>a<|endoftext|>", [EOT, "<|pad|>"], ["<|pad|>", "<|pad|>", "a", EOT]),
    ("", [EOT], []),
    ("a<|endoftext", [EOT], ["a", "<|", "endoftext"]),          # the text ends inside a special token
])
def test_pretokenize_hand_examples(student, text, special_tokens, expected):
    assert_same(student.pretokenize(text, special_tokens), expected, f"pretokenize({text!r}, {special_tokens})",
                "Keep the leading space with the word (' there'), split contractions, keep special tokens whole.")


@pytest.mark.exercise("1.2")
def test_pretokenize_matches_tokenizers_on_corpus_text(student):
    text = corpus_text(30_000).replace(EOT, "\n")
    assert_same(student.pretokenize(text), tokenizers_pretokenize(text), "pretokenize(corpus text)",
                "Apply GPT2_SPLIT_PATTERN with regex.findall on the whole text.")


@pytest.mark.exercise("1.2")
@FEW
@given(text=TEXT)
def test_pretokenize_matches_tokenizers_on_any_text(*, student, text):
    pieces = student.pretokenize(text)
    assert "".join(pieces) == text, f"pretokenize({text!r}) joined is {''.join(pieces)!r}: characters were lost"
    assert_same(pieces, tokenizers_pretokenize(text), f"pretokenize({text!r})",
                "Use the `regex` package with GPT2_SPLIT_PATTERN (\\p{L}, \\p{N}).")


@pytest.mark.exercise("1.2")
@FEW
@given(text=with_specials())
def test_pretokenize_keeps_special_tokens_whole(*, student, text):
    pieces = student.pretokenize(text, [EOT, "<|pad|>"])
    assert_same(pieces, reference_pretokenize(text, [EOT, "<|pad|>"]), f"pretokenize({text!r}, specials)",
                "Split out the special tokens first; pre-tokenize only the text between them.")


@pytest.mark.exercise("1.2")
def test_pretokenize_prefers_the_longest_special_token(student):
    specials = ["<|a|>", "<|a|><|b|>", "[MASK]"]
    text = "x<|a|><|b|><|a|> y[MASK]+<|b|>"
    assert_same(student.pretokenize(text, specials),
                ["x", "<|a|><|b|>", "<|a|>", " y", "[MASK]", "+<|", "b", "|>"],
                f"pretokenize({text!r}, {specials})",
                "Where two special tokens start at the same place the longer wins (sort them by length, "
                "longest first, before joining them into one pattern), and escape them (regex.escape).")


@pytest.mark.exercise("1.2")
@pytest.mark.parametrize("special_tokens", [["<s>", "s><pad>"], ["s><pad>", "<s>"]])
def test_pretokenize_finds_special_tokens_leftmost_first(student, special_tokens):
    text = "<s><pad> s><pad><s>"
    expected = ["<s>", "<", "pad", ">", " ", "s><pad>", "<s>"]
    assert reference_pretokenize(text, special_tokens) == expected, "test of the test"
    assert_same(student.pretokenize(text, special_tokens), expected, f"pretokenize({text!r}, {special_tokens})",
                "Scan the text from the left: the special token that starts first wins, whatever its length "
                "(splitting by one special token after another finds the longer one first).")


@pytest.mark.exercise("1.2")
def test_pretokenize_takes_a_tuple_and_leaves_the_callers_list_alone(student):
    special_tokens = ["[MASK]", "<|a|>", "<|a|><|b|>"]
    text = "x<|a|><|b|><|a|> y[MASK]+"
    expected = reference_pretokenize(text, special_tokens)
    assert_same(student.pretokenize(text, tuple(special_tokens)), expected, "pretokenize with a tuple of specials")
    assert_same(student.pretokenize(text, special_tokens), expected, "pretokenize with a list of specials")
    assert_unchanged(special_tokens, ["[MASK]", "<|a|>", "<|a|><|b|>"], what="the caller's special_tokens list")


@pytest.mark.exercise("1.2")
def test_pretokenize_returns_a_list_of_str(student):
    for text in ("Hi  there<|endoftext|>!", ""):
        assert_list_of(student.pretokenize(text, [EOT]), str, f"pretokenize({text!r})")


# -- 1.3 train_bpe ----------------------------------------------------------------------------------
HAND_MERGES = [(b"a", b"a"), (b"aa", b"a"), (b"aaa", b"b"), (b"d", b"aaab"), (b"daaab", b"a"),
               (b"daaaba", b"c"), (b"aaab", b"daaabac")]


@pytest.mark.exercise("1.3")
def test_train_bpe_on_the_classic_example(student):
    # "aaabdaaabac" is one pre-token. (a, a) occurs 4 times; then (aa, a) and (a, b) tie at 2 and
    # the greater pair, (b"aa", b"a"), wins; later all pairs tie at 1 and (b"d", ...) is the greatest.
    vocab, merges = student.train_bpe(["aaabdaaabac"], 256 + len(HAND_MERGES))
    assert_same(list(map(tuple, merges)), HAND_MERGES, "merges of train_bpe(['aaabdaaabac'])",
                "Count all adjacent pairs ('aaa' has two (a, a)); break ties towards the greatest "
                "(left, right) pair of bytes.")
    assert_same(list(vocab), layout(HAND_MERGES), "vocab of train_bpe(['aaabdaaabac'])",
                "vocab: the 256 single bytes, then one token per merge (left + right).")


@pytest.mark.exercise("1.3")
def test_train_bpe_stops_when_no_pair_is_left(student):
    vocab, merges = student.train_bpe(["aaabdaaabac"], 1000, [EOT])
    assert len(merges) == len(HAND_MERGES), (
        f"train_bpe(['aaabdaaabac'], vocab_size=1000) made {len(merges)} merges; after 7 the text is one "
        "token and training must stop")
    assert_same(list(vocab), layout(HAND_MERGES, [EOT]), "vocab when training stops early",
                "The special tokens still come last.")


@pytest.mark.exercise("1.3")
def test_train_bpe_keeps_documents_apart(student):
    _, merges = student.train_bpe(["ab", "cd"], 300)
    assert_same(list(map(tuple, merges)), [(b"c", b"d"), (b"a", b"b")], "train_bpe(['ab', 'cd'])",
                "Pre-tokenize each document on its own: no pre-token spans two documents "
                "(and the tie between (a, b) and (c, d) goes to the greater pair).")


@pytest.mark.exercise("1.3")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_bpe_matches_brute_force_on_random_corpora(student, seed):
    rng = random.Random(seed)
    alphabet = ["a", "b", "c", "é", "ab", " ", " ", "\n", ".", "1", "ß"]
    documents = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(12)]
    vocab_size = 256 + 40
    expected, tied = brute_force_bpe(documents, vocab_size)
    assert any(tied), "test corpus has no tie (test of the test)"
    vocab, merges = student.train_bpe(documents, vocab_size)
    assert_same(list(map(tuple, merges)), expected, f"merges of train_bpe (random corpus, seed {seed})",
                "Most frequent pair first (all adjacent pairs inside each pre-token, weighted by its count); "
                "ties go to the greatest (left, right); merges never cross pre-tokens.")
    assert_same(list(vocab), layout(expected), "vocab of train_bpe (random corpus)")


@pytest.mark.exercise("1.3")
def test_train_bpe_drops_special_tokens_from_the_training_text(student):
    rng = random.Random(7)
    words = ["<|", "|>", "end", "of", "text", " the", " cat", "!"]
    documents = [EOT.join("".join(rng.choice(words) for _ in range(8)) for _ in range(6)) for _ in range(10)]
    vocab_size = 256 + 30 + 2
    expected, _ = brute_force_bpe(documents, vocab_size, [EOT, "<|pad|>"])
    vocab, merges = student.train_bpe(documents, vocab_size, [EOT, "<|pad|>"])
    assert_same(list(map(tuple, merges)), expected, "merges with special tokens in the training text",
                "Cut the special tokens out before counting pairs: their text takes no part in training.")
    assert_same(list(vocab[-2:]), [EOT.encode(), b"<|pad|>"], "the last two vocab entries",
                "Special tokens come at the end of vocab, in the order given.")
    assert len(vocab) == vocab_size, f"len(vocab) is {len(vocab)}, expected vocab_size={vocab_size}"


@pytest.mark.exercise("1.3")
def test_train_bpe_agrees_with_tokenizers_until_the_first_tie(student):
    documents = load_corpus("validation")
    expected, _ = brute_force_bpe(documents, 10**6, [EOT], stop_at_tie=True)
    n = len(expected)
    library = tokenizers_bpe(documents, 256 + n + 1, [EOT])
    assert library == expected, "tokenizers and the brute-force trainer disagree (test of the test)"
    assert n >= 5, f"only {n} merges before the first tie (test of the test)"
    _, merges = student.train_bpe(documents, 256 + n + 1, [EOT])
    assert_same(list(map(tuple, merges)), library,
                f"the first {n} merges on corpus text (all before any tie) against the tokenizers BPE trainer",
                "The most frequent pair of adjacent tokens inside a pre-token, weighted by frequency.")


@pytest.mark.exercise("1.3")
def test_train_bpe_merges_stay_inside_pre_tokens(student):
    documents = [corpus_text(15_000, split="validation")]
    vocab, merges = student.train_bpe(documents, 256 + 150 + 1, [EOT])
    pieces = {p.encode() for p in reference_pretokenize(documents[0], [EOT]) if p != EOT}
    for left, right in merges:
        token = left + right
        assert any(token in piece for piece in pieces), (
            f"merged token {token!r} is not part of any pre-token of the text: merges must not cross "
            "pre-token boundaries, and special tokens take no part in training")


@pytest.mark.exercise("1.3")
def test_train_bpe_breaks_ties_by_the_pair_not_by_its_concatenation(student):
    # After (a, b), the pairs (ab, c) and (a, z) tie at 2. As pairs, (b"ab", b"c") > (b"a", b"z")
    # because b"ab" > b"a"; as concatenations, b"abc" < b"az".
    documents = ["ab"] * 3 + ["abc"] * 2 + ["az"] * 2
    expected = [(b"a", b"b"), (b"ab", b"c"), (b"a", b"z")]
    assert brute_force_bpe(documents, 259)[0] == expected, "test of the test"
    _, merges = student.train_bpe(documents, 259)
    assert_same(list(map(tuple, merges)), expected, "train_bpe(['ab'] * 3 + ['abc'] * 2 + ['az'] * 2)",
                "Ties go to the greatest (left, right) compared as a tuple of bytes, not to the greatest left + right.")


@pytest.mark.exercise("1.3")
def test_train_bpe_adds_each_special_token_once_in_the_given_order(student):
    documents = [f"the cat{EOT} the hat<|pad|> that", "chat"]
    special_tokens = ["<|pad|>", EOT, "<|pad|>"]  # not sorted, and one twice
    vocab_size = 256 + 6 + 2
    expected, _ = brute_force_bpe(documents, vocab_size, special_tokens)
    vocab, merges = student.train_bpe(documents, vocab_size, special_tokens)
    assert_same(list(map(tuple, merges)), expected, f"merges with special_tokens={special_tokens}")
    assert_same(list(vocab), layout(expected, special_tokens), f"vocab with special_tokens={special_tokens}",
                "Each special token once (the first time it appears), in the order given: dict.fromkeys keeps "
                "order, a set does not.")


@pytest.mark.exercise("1.3")
@pytest.mark.parametrize("documents, vocab_size, special_tokens", [
    (["hello hello"], 258, [EOT, "<|pad|>"]),      # exactly room for the special tokens
    ([], 300, [EOT]),                               # no documents
    ([EOT + EOT, "", "x"], 300, [EOT]),             # nothing to merge but special tokens
])
def test_train_bpe_with_no_merge_to_make(student, documents, vocab_size, special_tokens):
    vocab, merges = student.train_bpe(documents, vocab_size, special_tokens)
    assert list(merges) == [], f"train_bpe({documents}, {vocab_size}, {special_tokens}) made merges {merges}"
    assert_same(list(vocab), layout([], special_tokens), f"vocab of train_bpe({documents}, {vocab_size})",
                "256 single bytes, then the special tokens.")


@pytest.mark.exercise("1.3")
def test_train_bpe_returns_lists_of_bytes_and_pairs_and_leaves_its_inputs_alone(student):
    documents, special_tokens = ["aaabdaaabac", f"ab{EOT}ba"], [EOT]
    result = student.train_bpe(documents, 256 + 4 + 1, special_tokens)
    assert type(result) is tuple and len(result) == 2, f"train_bpe returned {type(result).__name__}, expected (vocab, merges)"
    vocab, merges = result
    assert_list_of(vocab, bytes, "train_bpe's vocab")
    assert_list_of(merges, tuple, "train_bpe's merges")
    assert all(len(pair) == 2 and all(type(x) is bytes for x in pair) for pair in merges), (
        f"merges must be (bytes, bytes) pairs, got {merges}")
    assert_unchanged(documents, ["aaabdaaabac", f"ab{EOT}ba"], what="the caller's documents")
    assert_unchanged(special_tokens, [EOT], what="the caller's special_tokens")


# -- 1.4 bpe_encode ---------------------------------------------------------------------------------
@pytest.mark.exercise("1.4")
def test_bpe_encode_applies_merges_by_rank(student):
    merges = [(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")]
    vocab = layout(merges)
    assert_same(student.bpe_encode(vocab, merges, "abc"), [97, 256],
                "bpe_encode('abc') with merges [(b, c), (a, b), (ab, c)]",
                "Merge the pair with the LOWEST rank first (b+c, rank 0), not the leftmost pair (a+b): "
                "'abc' is a + bc, and (a, bc) is not a merge.")
    assert_same(student.bpe_encode(vocab, merges, "abd"), [257, 100], "bpe_encode('abd')")


@pytest.mark.exercise("1.4")
def test_bpe_encode_does_not_merge_across_pre_tokens(student):
    merges = [(b"a", b" "), (b"a ", b"b")]
    vocab = layout(merges)
    assert_same(student.bpe_encode(vocab, merges, "a b"), [97, 32, 98], "bpe_encode('a b') with merge (a, ' ')",
                "Pre-tokenize first ('a', ' b'): a merge never joins two pre-tokens.")


@pytest.mark.exercise("1.4")
def test_bpe_encode_matches_tiktoken_on_corpus_text(student):
    vocab, merges = trained()
    text = corpus_text(20_000)
    assert_same(student.bpe_encode(vocab, merges, text, SPECIALS), tiktoken_ids(vocab, merges, text, SPECIALS),
                "bpe_encode(corpus text) against tiktoken with the same ranks",
                "Pre-tokenize with the GPT-2 pattern, apply merges by rank inside each pre-token, and map "
                "special tokens to their ids.")


@pytest.mark.exercise("1.4")
@FEW
@given(text=with_specials())
def test_bpe_encode_matches_tiktoken_on_any_text(*, student, text):
    vocab, merges = trained()
    assert_same(student.bpe_encode(vocab, merges, text, SPECIALS), tiktoken_ids(vocab, merges, text, SPECIALS),
                f"bpe_encode({text!r}) against tiktoken")


@pytest.mark.exercise("1.4")
def test_bpe_encode_special_tokens_are_single_ids_only_when_asked(student):
    vocab, merges = trained()
    text = f"{EOT}Hello<|pad|>{EOT}"
    ids = student.bpe_encode(vocab, merges, text, SPECIALS)
    eot, pad = len(vocab) - 4, len(vocab) - 3
    assert ids[0] == eot and ids[-1] == eot and pad in ids, (
        f"bpe_encode({text!r}) = {ids}: expected {EOT} -> {eot} and <|pad|> -> {pad} (their positions in vocab)")
    plain = student.bpe_encode(vocab, merges, text)
    assert_same(plain, tiktoken_ids(vocab, merges, text), "bpe_encode(text with special tokens, special_tokens=())",
                "Without special_tokens, '<|endoftext|>' is ordinary text.")


@pytest.mark.exercise("1.4")
@pytest.mark.parametrize("special_tokens", [[EOT], ["<|im_end|>", EOT], SPECIALS[::-1], ("<|pad|>", "<|im_start|>")],
                         ids=["one", "subset-reordered", "reversed", "tuple"])
def test_bpe_encode_with_special_tokens_a_subset_or_in_another_order(student, special_tokens):
    vocab, merges = trained()
    got = student.bpe_encode(vocab, merges, CHAT, special_tokens)
    assert_same(got, reference_ids(vocab, merges, CHAT, special_tokens),
                f"bpe_encode(chat text, special_tokens={special_tokens})",
                "A special token's id is its position in vocab, not its place in special_tokens (which may "
                "name a subset, in any order); the others are ordinary text.")


@pytest.mark.exercise("1.4")
@pytest.mark.parametrize("special_tokens", [["<s>", "<s><s>"], ["<s><s>", "<s>"]])
def test_bpe_encode_special_tokens_that_are_prefixes_of_one_another(student, special_tokens):
    merges = [(b"<", b"s"), (b"<s", b">")]
    vocab = layout(merges, ["<s>", "<s><s>"])  # "<s>" is also the ordinary token 257: its special id is 258
    text = "<s><s><s>x<s><s"                    # ends inside a special token
    expected = [259, 258, ord("x"), 258, ord("<"), ord("s")]
    assert reference_ids(vocab, merges, text, special_tokens) == expected, "test of the test"
    assert_same(student.bpe_encode(vocab, merges, text, special_tokens), expected,
                f"bpe_encode({text!r}, {special_tokens})",
                "The longest special token wins where two start at the same place, whatever their order; its id "
                "is its place among the special tokens at the end of vocab (258), not the first equal entry (257).")


@pytest.mark.exercise("1.4")
def test_bpe_encode_uses_the_merges_it_is_given(student):
    bc, ab = [(b"b", b"c")], [(b"a", b"b")]
    for merges, expected in ((bc, [97, 256]), (ab, [256, 99]), (bc, [97, 256])):
        assert_same(student.bpe_encode(layout(merges), merges, "abc"), expected, f"bpe_encode('abc', merges={merges})",
                    "A cache of encoded pre-tokens must belong to one tokenizer (key it by the merges too).")


@pytest.mark.exercise("1.4")
def test_bpe_encode_returns_a_list_of_int_and_leaves_its_inputs_alone(student):
    vocab, merges = trained()
    special_tokens = ["<|im_end|>", EOT]
    vocab_before, merges_before = list(vocab), list(merges)
    ids = student.bpe_encode(vocab, merges, CHAT, special_tokens)
    assert_list_of(ids, int, "bpe_encode")
    assert_unchanged(special_tokens, ["<|im_end|>", EOT], what="the caller's special_tokens")
    assert_unchanged((vocab, merges), (vocab_before, merges_before), what="the caller's vocab or merges")


# -- 1.5 bpe_decode ---------------------------------------------------------------------------------
@pytest.mark.exercise("1.5")
@FEW
@given(text=with_specials())
def test_bpe_decode_inverts_encoding_on_any_text(*, student, text):
    vocab, merges = trained()
    ids = tiktoken_ids(vocab, merges, text, SPECIALS)
    assert student.bpe_decode(vocab, ids) == text, (
        f"bpe_decode(ids of {text!r}) = {student.bpe_decode(vocab, ids)!r}: join the tokens' bytes, then decode "
        "the whole byte string as UTF-8 (a character's bytes can sit in two tokens)")


@pytest.mark.exercise("1.5")
@pytest.mark.parametrize("ids, expected", [
    ([0xC3, 0xA9], "é"),                        # one character, two tokens
    ([0xC3], "\ufffd"),                          # cut after the first byte of "é"
    ([0x61, 0xF0, 0x9F, 0x98], "a\ufffd"),       # a cut 4-byte emoji: one replacement character
    ([0xFF, 0x62], "\ufffdb"),                   # a byte that is never valid UTF-8
    ([], ""),
])
def test_bpe_decode_replaces_invalid_utf8(student, ids, expected):
    vocab = layout([])
    got = student.bpe_decode(vocab, ids)
    assert got == expected, (f"bpe_decode(byte tokens {ids}) = {got!r}, expected {expected!r}: decode the joined "
                             "bytes with errors='replace' (no exception, one U+FFFD per invalid sequence)")


@pytest.mark.exercise("1.5")
def test_bpe_decode_keeps_every_byte_including_zero(student):
    got = student.bpe_decode(layout([]), (0, 10, 0, 32, 255))  # a tuple of ids is a valid argument too
    assert got == "\x00\n\x00 \ufffd", (f"bpe_decode(ids (0, 10, 0, 32, 255)) = {got!r}: id 0 is the byte 0, "
                                       "not padding; every id is a token")
    assert type(got) is str, f"bpe_decode returned {type(got).__name__}, expected str"


@pytest.mark.exercise("1.5")
def test_bpe_decode_reads_the_vocab_it_is_given(student):
    for merges in ([(b"a", b"b")], [(b"c", b"d")], [(b"a", b"b")]):
        got = student.bpe_decode(layout(merges), [256, 256])
        expected = (merges[0][0] + merges[0][1]).decode() * 2
        assert got == expected, (f"bpe_decode([256, 256]) with vocab[256] = {merges[0][0] + merges[0][1]!r} gave "
                                 f"{got!r}: look tokens up in the vocab passed in, not in one kept from another call")


# -- 1.6 encode_chunk -------------------------------------------------------------------------------
def stream(student, vocab, merges, chunks, special_tokens):
    """Drive ``encode_chunk`` like ``encode_iterable`` does: (ids, longest buffer kept)."""
    ids, buffer, longest = [], "", 0
    for chunk in chunks:
        new_ids, buffer = student.encode_chunk(vocab, merges, buffer, chunk, special_tokens)
        ids += new_ids
        longest = max(longest, len(buffer))
    new_ids, buffer = student.encode_chunk(vocab, merges, buffer, None, special_tokens)
    assert buffer == "", f"encode_chunk(..., chunk=None) returned buffer {buffer!r}: at the end, encode everything"
    return ids + list(new_ids), longest


def random_chunks(text: str, seed: int, max_size: int = 40) -> list[str]:
    rng, chunks, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(0, max_size)
        chunks.append(text[i:i + n])
        i += n
    return chunks


@pytest.mark.exercise("1.6")
@pytest.mark.parametrize("chunks", [
    ["Hello wor", "ld, hello world"],                   # inside a word
    ["a  ", " b", "\n", "\n c"],                        # inside runs of whitespace
    ["x<|endof", "text|>y<", "|pad|", ">"],             # inside special tokens
    ["<|im_start|", ">user\nhi<|im_end|>"],
    ["don", "'", "t 12", "34"],                         # inside a contraction and a number
    list("The <|pad|> cat's 42 naïve 😀!"),          # one character at a time
    ["a <|im_", "end"],                                 # ends inside a special token that never comes
    ["tail <|endof"],
])
def test_encode_chunk_gives_the_ids_of_the_whole_text(student, chunks):
    vocab, merges = trained()
    text = "".join(chunks)
    ids, _ = stream(student, vocab, merges, chunks, SPECIALS)
    assert_same(ids, tiktoken_ids(vocab, merges, text, SPECIALS), f"ids of the stream {chunks}",
                "A chunk can end inside a pre-token or a special token: keep the last pre-token and any "
                "unfinished special token in the buffer instead of encoding them.")


@pytest.mark.exercise("1.6")
@pytest.mark.parametrize("seed", [0, 1])
def test_encode_chunk_streams_corpus_text_in_bounded_memory(student, seed):
    vocab, merges = trained()
    text = corpus_text(3_000, seed=seed).replace("\n\n\n", "\n")
    chunks = random_chunks(text, seed)
    ids, longest = stream(student, vocab, merges, chunks, SPECIALS)
    assert_same(ids, tiktoken_ids(vocab, merges, text, SPECIALS), "ids of a chunked corpus text",
                "Concatenated over all steps, the ids must be those of the whole text.")
    longest_piece = max(map(len, reference_pretokenize(text, SPECIALS)))
    bound = 2 * longest_piece + max(map(len, SPECIALS)) + 40
    assert longest <= bound, (f"the buffer grew to {longest} characters (the text's longest pre-token has "
                              f"{longest_piece}): keep only what the next chunk can still change")


@pytest.mark.exercise("1.6")
def test_encode_chunk_at_the_end_of_an_empty_stream(student):
    vocab, merges = trained()
    ids, buffer = student.encode_chunk(vocab, merges, "", None, SPECIALS)
    assert list(ids) == [] and buffer == "", f"encode_chunk(buffer='', chunk=None) = {(ids, buffer)}, expected ([], '')"


@pytest.mark.exercise("1.6")
@pytest.mark.parametrize("chunks", [["a<s>", "<s>b"], ["<s>", "<s>", "<s>"], ["x<s><", "s>y<s"], ["<s><s", ">"],
                                    ["<s>"], ["<s", "><s>"]])
def test_encode_chunk_with_special_tokens_that_are_prefixes_of_one_another(student, chunks):
    _, merges = trained()
    special_tokens = ["<s>", "<s><s>", EOT]
    vocab = layout(merges, [*SPECIALS, "<s>", "<s><s>"])
    ids, _ = stream(student, vocab, merges, chunks, special_tokens)
    assert_same(ids, reference_ids(vocab, merges, "".join(chunks), special_tokens), f"ids of the stream {chunks}",
                "A complete special token can still become a longer one ('<s>' then '<s><s>'): hold it back "
                "while the end of the text is the start of some special token.")


PREFIX_SPECIALS = ["<s>", "<s><s>", "s>", "<|e|>", "<|e|><|f|>"]  # prefixes and overlaps of one another


@pytest.mark.exercise("1.6")
@FEW
@given(text=st.lists(st.sampled_from(["<", "s", ">", "x", " ", "<s>", "|", "e", "<|e|>", "<|f|>"]), max_size=12)
       .map("".join), cuts=st.lists(st.integers(0, 40), max_size=4),
       special_tokens=st.lists(st.sampled_from(PREFIX_SPECIALS), min_size=1, max_size=5, unique=True))
def test_encode_chunk_with_overlapping_special_tokens_and_any_cuts(*, student, text, cuts, special_tokens):
    _, merges = trained()
    vocab = layout(merges, PREFIX_SPECIALS)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    ids, _ = stream(student, vocab, merges, chunks, special_tokens)
    assert_same(ids, reference_ids(vocab, merges, text, special_tokens),
                f"ids of the stream {chunks} with special_tokens={special_tokens}",
                "Hold back from the first place where a special token may still start and run past the end, "
                "but not from inside a special token the text already holds in full.")


@pytest.mark.exercise("1.6")
@pytest.mark.parametrize("special_tokens", [[EOT], SPECIALS[::-1]], ids=["subset", "reversed"])
def test_encode_chunk_with_special_tokens_a_subset_or_in_another_order(student, special_tokens):
    vocab, merges = trained()
    chunks = ["a<|pad|", "><|endof", "text|> <|im_", "start|>x"]
    ids, _ = stream(student, vocab, merges, chunks, special_tokens)
    assert_same(ids, reference_ids(vocab, merges, "".join(chunks), special_tokens),
                f"ids of the stream {chunks} with special_tokens={special_tokens}")


@pytest.mark.exercise("1.6")
def test_encode_chunk_returns_a_tuple_of_ids_and_buffer(student):
    vocab, merges = trained()
    for buffer, chunk in (("", "Hello wor"), ("wor", "ld<|endof"), ("x", None)):
        result = student.encode_chunk(vocab, merges, buffer, chunk, SPECIALS)
        assert type(result) is tuple and len(result) == 2, (
            f"encode_chunk returned {type(result).__name__}, expected a tuple (ids, new_buffer)")
        assert_list_of(result[0], int, "encode_chunk's ids")
        assert type(result[1]) is str, f"encode_chunk's new_buffer is {type(result[1]).__name__}, expected str"


# -- 1.7 to_tokenizer_json --------------------------------------------------------------------------
def load_json(student, vocab, merges, special_tokens) -> Tokenizer:
    text = student.to_tokenizer_json(vocab, merges, special_tokens)
    assert isinstance(text, str), f"to_tokenizer_json returned {type(text).__name__}, expected the JSON text (str)"
    try:
        return Tokenizer.from_str(text)
    except Exception as err:
        raise AssertionError(f"tokenizers.Tokenizer.from_str could not load your tokenizer.json: {err}") from None


@pytest.mark.exercise("1.7")
def test_tokenizer_json_loads_and_gives_the_same_ids_on_corpus_text(student):
    vocab, merges = trained()
    tok = load_json(student, vocab, merges, SPECIALS)
    text = corpus_text(20_000)
    assert_same(tok.encode(text).ids, tiktoken_ids(vocab, merges, text, SPECIALS),
                "Tokenizer.from_str(to_tokenizer_json(...)).encode(corpus text)",
                "Write tokens in GPT-2's byte-level alphabet (bytes_to_unicode), merges in rank order, the "
                "GPT-2 Split pre-tokenizer followed by ByteLevel(use_regex=False), and the special tokens as "
                "added_tokens.")
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text, (
        "decoding with the tokenizer.json does not give the text back: is the decoder ByteLevel?")


@pytest.mark.exercise("1.7")
@FEW
@given(text=with_specials())
def test_tokenizer_json_gives_the_same_ids_on_any_text(*, student, text):
    vocab, merges = trained()
    tok = load_json(student, vocab, merges, SPECIALS)
    assert_same(tok.encode(text).ids, tiktoken_ids(vocab, merges, text, SPECIALS), f"tokenizer.json on {text!r}")


@pytest.mark.exercise("1.7")
def test_tokenizer_json_works_in_transformers(student):
    vocab, merges = trained()
    tokenizer = load_json(student, vocab, merges, SPECIALS)
    from transformers import PreTrainedTokenizerFast  # (imported once there is something to wrap)

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOT, pad_token="<|pad|>")
    text = "<|im_start|>user\nWhat's 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>" + EOT
    assert_same(fast(text)["input_ids"], tiktoken_ids(vocab, merges, text, SPECIALS),
                "PreTrainedTokenizerFast(tokenizer_object=...) on a chat text")
    assert fast.eos_token_id == len(vocab) - 4 and fast.pad_token_id == len(vocab) - 3, (
        "transformers does not find the special tokens at their ids: list them in added_tokens with their ids")


@pytest.mark.exercise("1.7")
@pytest.mark.parametrize("special_tokens", [[], [EOT], ["<|im_end|>", EOT], SPECIALS[::-1]],
                         ids=["none", "one", "subset-reordered", "reversed"])
def test_tokenizer_json_with_special_tokens_a_subset_or_in_another_order(student, special_tokens):
    vocab, merges = trained()
    tok = load_json(student, vocab, merges, special_tokens)
    assert_same(tok.encode(CHAT).ids, reference_ids(vocab, merges, CHAT, special_tokens),
                f"tokenizer.json with special_tokens={special_tokens} on a chat text",
                "Hugging Face ignores an added token's \"id\": it takes it from the model's vocab, else numbers "
                "added tokens after it in list order. Put every special token of vocab in the model's vocab at its id.")
    ids = list(range(len(vocab) - 8, len(vocab)))  # the last merges and every special token
    expected = b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    assert tok.decode(ids, skip_special_tokens=False) == expected, (
        f"tokenizer.json with special_tokens={special_tokens} decodes ids {ids} to "
        f"{tok.decode(ids, skip_special_tokens=False)!r}, expected {expected!r}")


@pytest.mark.exercise("1.7")
def test_tokenizer_json_marks_special_tokens_as_special(student):
    vocab, merges = trained()
    tok = load_json(student, vocab, merges, SPECIALS)
    plain = tok.decode(tok.encode(CHAT).ids, skip_special_tokens=True)
    expected = CHAT
    for token in SPECIALS:
        expected = expected.replace(token, "")
    assert plain == expected, (f"decode(..., skip_special_tokens=True) gave {plain!r}, expected {expected!r}: "
                               "give each added token \"special\": true")


# -- not graded: the implemented tokenizer built on the exercises (needs the reference solutions) --
@pytest.fixture
def solution_mode(monkeypatch):
    pytest.importorskip("solutions.tokenization", reason="needs the reference solutions")
    from course_lib import exercises

    monkeypatch.setenv(exercises.MODE_ENV, "solution")
    monkeypatch.setenv(exercises.STUDENT_MODULES_ENV, "")


def test_bpe_tokenizer_round_trips_saves_and_streams(solution_mode, tmp_path):
    from course_lib.tokenization import BPETokenizer

    tok = BPETokenizer.train(load_corpus("validation"), 600, SPECIALS)
    text = corpus_text(5_000) + "<|im_start|>user\nnaïve 😀<|im_end|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and ids.count(tok.token_id(EOT)) == text.count(EOT)
    loaded = BPETokenizer.load(tok.save(tmp_path / "tok"))
    assert (loaded.vocab, loaded.merges, loaded.special_tokens) == (tok.vocab, tok.merges, tok.special_tokens)
    path = tmp_path / "big.txt"
    path.write_text(text * 3, encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        assert list(tok.encode_iterable(f)) == tok.encode(text * 3)
    from course_lib.tokenization import encode_iterable

    chunks = random_chunks(text, seed=5, max_size=300)
    assert list(encode_iterable(tok.vocab, tok.merges, chunks, tok.special_tokens, block_size=500)) == tok.encode(text)
    from tokenizers import Tokenizer, models

    files = Tokenizer(models.BPE.from_file(str(tmp_path / "tok" / "vocab.json"), str(tmp_path / "tok" / "merges.txt")))
    assert files.get_vocab_size() == len(tok), "vocab.json/merges.txt load in tokenizers"


def test_bpe_tokenizer_in_transformers(solution_mode):
    from course_lib.tokenization import BPETokenizer

    tok = BPETokenizer.train(load_corpus("validation"), 500, SPECIALS)
    fast = tok.to_transformers()
    text = "<|im_start|>assistant\nHello there!<|im_end|><|endoftext|>"
    assert fast(text)["input_ids"] == tok.encode(text)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (
        tok.token_id(EOT), tok.token_id(EOT), tok.token_id("<|pad|>"))
    assert fast.decode(tok.encode(text)) == text


def test_course_tokenizer_is_trained_once_and_cached(solution_mode, tmp_path, monkeypatch):
    from course_lib import tokenization

    source = tmp_path / "docs.txt"
    source.write_text("\n\n".join(load_corpus("test")), encoding="utf-8")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    tok = tokenization.train_course_tokenizer(400, source=str(source))
    assert len(tok) == 400 and tok.special_tokens == list(tokenization.COURSE_SPECIAL_TOKENS)
    monkeypatch.setattr(tokenization, "train_bpe", lambda *a: pytest.fail("trained again instead of loading"))
    again = tokenization.train_course_tokenizer(400, source=str(source))
    assert (again.vocab, again.merges) == (tok.vocab, tok.merges)


# -- not graded: bad input gets an error naming the argument (checked before your code runs) ------
def _bad_calls():
    from course_lib import tokenization as T

    one = [(b"a", b"b")]
    return [
        (lambda: T.word_tokenize(b"bytes"), TypeError, "text"),
        (lambda: T.pretokenize("x", EOT), TypeError, "special_tokens"),
        (lambda: T.pretokenize("x", [""]), ValueError, r"special_tokens\[0\]"),
        (lambda: T.train_bpe("one document", 300), TypeError, "documents"),
        (lambda: T.train_bpe(["abc", 5], 300), TypeError, r"documents\[1\]"),
        (lambda: T.train_bpe(["abc"], 300.0), TypeError, "vocab_size"),
        (lambda: T.train_bpe(["abc"], 257, ["<a>", "<b>"]), ValueError, "vocab_size"),
        (lambda: T.bpe_encode(layout(one), one, 5), TypeError, "text"),
        (lambda: T.bpe_encode(layout(one), one, "x", [EOT]), ValueError, "special token"),
        (lambda: T.bpe_encode(layout(one)[:-1], one, "x"), ValueError, "vocab"),
        (lambda: T.bpe_encode(layout([(b"a", b"c")]), one, "x"), ValueError, "vocab and merges"),
        (lambda: T.bpe_encode(layout(one), [("a", "b")], "x"), TypeError, r"merges\[0\]"),
        (lambda: T.bpe_decode(layout([]), [256]), ValueError, r"ids\[0\]"),
        (lambda: T.bpe_decode(layout([]), [1.0]), TypeError, r"ids\[0\]"),
        (lambda: T.encode_chunk(layout(one), one, "", 3), TypeError, "chunk"),
        (lambda: T.encode_chunk(layout(one), one, None, "x"), TypeError, "buffer"),
        (lambda: T.to_tokenizer_json(layout(one), one, ["<|absent|>"]), ValueError, "special token"),
        (lambda: T.to_tokenizer_json(layout(one, ["ab"]), one, ["ab"]), ValueError, "byte-level alphabet"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_gets_an_error_naming_the_argument(index):
    call, error, names = _bad_calls()[index]
    with pytest.raises(error, match=names):
        call()
