"""Chapter 1 graded tests (hidden: grading only, not in the student handout)."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from course_lib.corpus import load_corpus
from tests.test_tokenization import (ANY_CHAR, EOT, FEW, SPECIALS, TEXT, assert_same, brute_force_bpe, corpus_text,
                                     layout, reference_pretokenize, stream, tiktoken_ids, tokenizers_bpe,
                                     tokenizers_pretokenize, trained, load_json, with_specials)

ODD_SPECIALS = ["[MASK]", "a.b", "<s>", "<s><s>", " <sep> ", "<|☃|>"]


# -- 1.1 --------------------------------------------------------------------------------------------
@pytest.mark.exercise("1.1")
@pytest.mark.parametrize("text, expected", [
    ("Tabs\tand\nnewlines\r\n", ["Tabs", "and", "newlines"]),
    ("日本語のテキスト。終わり", ["日本語のテキスト", "。", "終わり"]),
    ("👍🏽ok", ["👍", "🏽", "ok"]),
    ("٣٤ 12,5%", ["٣٤", "12", ",", "5", "%"]),
    ("__init__.py", ["__init__", ".", "py"]),
    ("e.g.", ["e", ".", "g", "."]),
])
def test_hidden_word_tokenize_more_scripts_and_symbols(student, text, expected):
    assert_same(student.word_tokenize(text), expected, f"word_tokenize({text!r})")


@pytest.mark.exercise("1.1")
def test_hidden_word_tokenize_on_corpus_text(student):
    text = corpus_text(20_000, split="validation")
    assert_same(student.word_tokenize(text), re.findall(r"\w+|[^\w\s]", text), "word_tokenize(corpus text)")


# -- 1.2 --------------------------------------------------------------------------------------------
@pytest.mark.exercise("1.2")
@pytest.mark.parametrize("text", ["", " ", "   ", "\n", " \n ", "a\r\nb", "x  \t y", "''s'S", "'ll've", "1 2  3",
                                  "!!! ??", "\u00a0word", "end   "])
def test_hidden_pretokenize_whitespace_and_contraction_edges(student, text):
    assert_same(student.pretokenize(text), tokenizers_pretokenize(text), f"pretokenize({text!r})")


@pytest.mark.exercise("1.2")
@FEW
@given(text=st.lists(st.one_of(TEXT, st.sampled_from(ODD_SPECIALS), st.sampled_from(["<s", "s>", "a", "."])),
                     max_size=8).map("".join))
def test_hidden_pretokenize_with_odd_special_tokens(*, student, text):
    assert_same(student.pretokenize(text, ODD_SPECIALS), reference_pretokenize(text, ODD_SPECIALS),
                f"pretokenize({text!r}, {ODD_SPECIALS})",
                "Escape the special tokens and try the longest first.")


@pytest.mark.exercise("1.2")
def test_hidden_pretokenize_special_tokens_at_the_ends_and_repeated(student):
    text = f"{EOT}{EOT} a{EOT}"
    assert_same(student.pretokenize(text, [EOT, EOT]), [EOT, EOT, " a", EOT], f"pretokenize({text!r})")


# -- 1.3 --------------------------------------------------------------------------------------------
@pytest.mark.exercise("1.3")
@pytest.mark.parametrize("seed", [10, 11, 12, 13])
def test_hidden_train_bpe_matches_brute_force_on_multibyte_corpora(student, seed):
    rng = random.Random(seed)
    alphabet = ["日", "本", "😀", "é", "e", " ", "  ", "'s", "x", "\n", "🏽", "1", "2", "!"]
    specials = ["<|endoftext|>", "<s>"] if seed % 2 else []
    documents = ["".join(rng.choice(alphabet + specials) for _ in range(rng.randint(1, 80))) for _ in range(15)]
    vocab_size = 256 + 60 + len(specials)
    expected, _ = brute_force_bpe(documents, vocab_size, specials)
    vocab, merges = student.train_bpe(documents, vocab_size, specials)
    assert_same(list(map(tuple, merges)), expected, f"merges of train_bpe (multi-byte corpus, seed {seed})")
    assert_same(list(vocab), layout(expected, specials), "vocab of train_bpe (multi-byte corpus)")


@pytest.mark.exercise("1.3")
def test_hidden_train_bpe_agrees_with_tokenizers_on_another_split(student):
    documents = load_corpus("test")
    expected, _ = brute_force_bpe(documents, 10**6, stop_at_tie=True)
    n = len(expected)
    library = tokenizers_bpe(documents, 256 + n)
    assert library == expected and n >= 5, "test of the test"
    _, merges = student.train_bpe(documents, 256 + n)
    assert_same(list(map(tuple, merges)), library, f"the first {n} merges against tokenizers (test split)")


@pytest.mark.exercise("1.3")
def test_hidden_train_bpe_with_no_room_for_merges(student):
    vocab, merges = student.train_bpe(["hello hello"], 258, [EOT, "<|pad|>", EOT])
    assert list(merges) == [], f"vocab_size=258 with two special tokens leaves no merge, got {merges}"
    assert_same(list(vocab), layout([], [EOT, "<|pad|>"]), "vocab with no merges", "Duplicate special tokens once.")


@pytest.mark.exercise("1.3")
def test_hidden_train_bpe_larger_corpus_matches_brute_force(student):
    documents = [corpus_text(6_000, split="validation", seed=3)]
    vocab_size = 256 + 80 + 1
    expected, _ = brute_force_bpe(documents, vocab_size, [EOT])
    _, merges = student.train_bpe(documents, vocab_size, [EOT])
    assert_same(list(map(tuple, merges)), expected, "80 merges on corpus text against the brute-force trainer")


# -- 1.4 --------------------------------------------------------------------------------------------
@pytest.mark.exercise("1.4")
@pytest.mark.parametrize("vocab_size", [300, 2000])
def test_hidden_bpe_encode_other_vocab_sizes_match_tiktoken(student, vocab_size):
    vocab, merges = trained(vocab_size, (EOT,))
    text = corpus_text(15_000, split="train", seed=vocab_size)
    assert_same(student.bpe_encode(vocab, merges, text, [EOT]), tiktoken_ids(vocab, merges, text, [EOT]),
                f"bpe_encode(corpus text) with vocab_size={vocab_size} against tiktoken")


@pytest.mark.exercise("1.4")
@FEW
@given(text=st.text(ANY_CHAR, min_size=1, max_size=80))
def test_hidden_bpe_encode_random_unicode_matches_tiktoken(*, student, text):
    vocab, merges = trained()
    assert_same(student.bpe_encode(vocab, merges, text), tiktoken_ids(vocab, merges, text), f"bpe_encode({text!r})")


@pytest.mark.exercise("1.4")
def test_hidden_bpe_encode_overlapping_special_tokens(student):
    merges = [(b"<", b"s"), (b"<s", b">")]
    specials = ["<s>", "<s><s>"]
    vocab = layout(merges, specials)
    got = student.bpe_encode(vocab, merges, "<s><s><s>x<s", specials)
    assert_same(got, [259, 258, ord("x"), ord("<"), ord("s")], "bpe_encode('<s><s><s>x<s', ['<s>', '<s><s>'])",
                "The longest special token wins where two start at the same place; '<s' after them is ordinary "
                "text ('x', '<', 's' are three pre-tokens).")


# -- 1.5 --------------------------------------------------------------------------------------------
@pytest.mark.exercise("1.5")
@FEW
@given(ids=st.lists(st.integers(0, 699), max_size=30))
def test_hidden_bpe_decode_any_ids(*, student, ids):
    vocab, _ = trained()
    expected = b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    assert student.bpe_decode(vocab, ids) == expected, f"bpe_decode({ids}): expected {expected!r}"


@pytest.mark.exercise("1.5")
def test_hidden_bpe_decode_corpus_round_trip(student):
    vocab, merges = trained()
    text = corpus_text(20_000, split="train")
    assert student.bpe_decode(vocab, tiktoken_ids(vocab, merges, text, SPECIALS)) == text, "corpus round trip"


# -- 1.6 --------------------------------------------------------------------------------------------
@pytest.mark.exercise("1.6")
def test_hidden_encode_chunk_every_split_point(student):
    vocab, merges = trained()
    text = "It's <|im_start|>  12 naïve\n\n 😀<|endoftext|>x"
    expected = tiktoken_ids(vocab, merges, text, SPECIALS)
    for i in range(len(text) + 1):
        ids, _ = stream(student, vocab, merges, [text[:i], text[i:]], SPECIALS)
        assert_same(ids, expected, f"ids of the stream {[text[:i], text[i:]]}")


@pytest.mark.exercise("1.6")
@FEW
@given(text=with_specials(specials=SPECIALS), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_hidden_encode_chunk_random_streams(*, student, text, cuts):
    vocab, merges = trained()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    ids, _ = stream(student, vocab, merges, chunks, SPECIALS)
    assert_same(ids, tiktoken_ids(vocab, merges, text, SPECIALS), f"ids of the stream {chunks}")


@pytest.mark.exercise("1.6")
def test_hidden_encode_chunk_partial_special_that_is_not_one(student):
    vocab, merges = trained()
    chunks = ["a <|im_", "end", " x<|im_end|", "!"]
    ids, _ = stream(student, vocab, merges, chunks, SPECIALS)
    assert_same(ids, tiktoken_ids(vocab, merges, "".join(chunks), SPECIALS), f"ids of the stream {chunks}")


# -- 1.7 --------------------------------------------------------------------------------------------
@pytest.mark.exercise("1.7")
@pytest.mark.parametrize("vocab_size, specials", [(300, ()), (1500, (EOT, "<|☃|>"))])
def test_hidden_tokenizer_json_other_tokenizers(student, vocab_size, specials):
    vocab, merges = trained(vocab_size, specials)
    tok = load_json(student, vocab, merges, list(specials))
    text = corpus_text(10_000, split="train", seed=1).replace(EOT, "<|☃|>" if specials else "\n")
    assert_same(tok.encode(text).ids, tiktoken_ids(vocab, merges, text, list(specials)),
                f"tokenizer.json (vocab_size={vocab_size}, special tokens {specials}) on corpus text")


@pytest.mark.exercise("1.7")
@FEW
@given(text=with_specials())
def test_hidden_tokenizer_json_decodes_back(*, student, text):
    vocab, merges = trained()
    tok = load_json(student, vocab, merges, SPECIALS)
    ids = tiktoken_ids(vocab, merges, text, SPECIALS)
    assert tok.decode(ids, skip_special_tokens=False) == text, f"tokenizer.json decode of the ids of {text!r}"
