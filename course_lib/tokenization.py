"""Chapter 1: tokenization, from text to ids with a byte-level BPE tokenizer that you train.

A language model reads integers. A tokenizer maps text to a list of token ids and back; this chapter
builds the one the course's models use: byte-level byte-pair encoding (BPE) with GPT-2's
pre-tokenizer, trained on the course corpus (:mod:`course_lib.corpus`).

Conventions used by every exercise of this chapter:

- **Text** is a Python ``str``; it is encoded to bytes as UTF-8, so every string can be tokenized
  (byte-level fallback: there is no unknown token).
- **Pre-tokens.** Before BPE, text is cut into pre-tokens with :data:`GPT2_SPLIT_PATTERN` (words with
  their leading space, numbers, punctuation runs, whitespace). Merges never cross a pre-token
  boundary, so ``" dog."`` can become ``" dog"`` + ``"."`` but never ``"g."``.
- **Special tokens** (``"<|endoftext|>"``, chat markers, ...) are strings that are never split and map
  to one id each. In text they are found leftmost first and, where two start at the same place,
  longest first. They are cut out before pre-tokenization and never take part in training.
- **The vocabulary** is a ``list[bytes]`` indexed by token id, laid out as :func:`train_bpe` returns
  it: ids ``0..255`` are the single bytes (``vocab[i] == bytes([i])``), id ``256 + k`` is the token
  made by merge ``k`` (``vocab[256 + k] == merges[k][0] + merges[k][1]``), and the special tokens
  (UTF-8 encoded) come last, in the order given.
- **Merges** are a ``list[tuple[bytes, bytes]]`` in the order they were learned; a merge's index is
  its *rank* (lower ranks are applied first when encoding).
- **Tie-break.** Training merges the most frequent adjacent pair; among pairs with the same count it
  takes the *lexicographically greatest* pair, comparing ``(left, right)`` as Python compares tuples
  of ``bytes`` (so ``(b"aa", b"a") > (b"a", b"b")`` and ``(b"d", b"x") > (b"a", b"z")``). This makes
  training deterministic: the same corpus always gives the same merges.

Everything crosses the grading door as plain data (``str``, ``bytes``, lists and tuples).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from course_lib.exercises import exercise

# GPT-2's pre-tokenizer (Radford et al., 2019; openai/gpt-2 src/encoder.py), for the `regex` package
# (the standard `re` module has no \p{L}). Tried left to right at each position, first match wins:
#   's|'t|'re|'ve|'m|'ll|'d   English contractions, split off the word before them ("don" + "'t")
#    ?\p{L}+                  a run of letters (any script) with at most one leading space
#    ?\p{N}+                  a run of digits (any script), with at most one leading space
#    ?[^\s\p{L}\p{N}]+        a run of punctuation/symbols, with at most one leading space
#   \s+(?!\S)                 whitespace, but not the last space before a word (that one goes with it)
#   \s+                       any other whitespace (a lone space or newline before a non-space)
# Every character is matched by one of them, so the pre-tokens joined give back the text.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The special tokens of the course tokenizer: end of text (also used as beginning), padding, and the
# ChatML markers that the instruction-tuning chapters put around each chat message.
COURSE_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
COURSE_VOCAB_SIZE = 4096


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_str(name: str, value) -> None:
    if type(value) is not str:
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def _check_special_tokens(special_tokens) -> None:
    if isinstance(special_tokens, (str, bytes)) or not isinstance(special_tokens, (list, tuple)):
        raise TypeError(f"special_tokens must be a list of str, got {type(special_tokens).__name__}")
    for i, token in enumerate(special_tokens):
        if type(token) is not str or not token:
            raise ValueError(f"special_tokens[{i}] must be a non-empty str, got {token!r}")


_SINGLE_BYTES = [bytes([i]) for i in range(256)]


def _check_vocab_merges(vocab, merges, full: bool = False) -> None:
    """Check the layout of ``vocab`` and ``merges``: every merge with ``full``, else a sample of them
    (this runs before every call, and a full check of a 4,096-token vocabulary costs milliseconds)."""
    if not isinstance(vocab, (list, tuple)):
        raise TypeError(f"vocab must be a list of bytes (token id -> token bytes), got {type(vocab).__name__}")
    if not isinstance(merges, (list, tuple)):
        raise TypeError(f"merges must be a list of (bytes, bytes) pairs, got {type(merges).__name__}")
    if len(vocab) < 256 + len(merges):
        raise ValueError(f"vocab has {len(vocab)} tokens, fewer than 256 bytes + {len(merges)} merges")
    if list(vocab[:256]) != _SINGLE_BYTES:
        bad = next(i for i in range(256) if vocab[i] != bytes([i]))
        raise ValueError(f"vocab[{bad}] must be bytes([{bad}]) (ids 0..255 are the single bytes), got {vocab[bad]!r}")
    step = 1 if full else max(1, len(merges) // 16)
    for k in sorted({*range(0, len(merges), step), len(merges) - 1} - {-1}):
        pair = merges[k]
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(type(x) is bytes for x in pair)):
            raise TypeError(f"merges[{k}] must be a pair of bytes, got {pair!r}")
        if vocab[256 + k] != pair[0] + pair[1]:
            raise ValueError(f"vocab[{256 + k}] must be merges[{k}][0] + merges[{k}][1] = {pair[0] + pair[1]!r}, "
                             f"got {vocab[256 + k]!r}: vocab and merges do not come from the same train_bpe")
    for i in range(256 + len(merges), len(vocab)):
        if type(vocab[i]) is not bytes:
            raise TypeError(f"vocab[{i}] must be bytes, got {type(vocab[i]).__name__}")


def _check_special_in_vocab(vocab, merges, special_tokens) -> None:
    _check_special_tokens(special_tokens)
    specials = set(vocab[256 + len(merges):])
    for token in special_tokens:
        if token.encode("utf-8") not in specials:
            raise ValueError(f"special token {token!r} is not among the special tokens at the end of vocab")


def _validate_word_tokenize(text) -> None:
    _check_str("text", text)


def _validate_pretokenize(text, special_tokens=()) -> None:
    _check_str("text", text)
    _check_special_tokens(special_tokens)


def _validate_train_bpe(documents, vocab_size, special_tokens=()) -> None:
    if isinstance(documents, str) or not isinstance(documents, (list, tuple)):
        raise TypeError(f"documents must be a list of str, got {type(documents).__name__}")
    for i, doc in enumerate(documents):
        if type(doc) is not str:
            raise TypeError(f"documents[{i}] must be a str, got {type(doc).__name__}")
    _check_special_tokens(special_tokens)
    if type(vocab_size) is not int:
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    n_special = len(set(special_tokens))
    if vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size={vocab_size} is smaller than 256 bytes + {n_special} special tokens")


def _validate_bpe_encode(vocab, merges, text, special_tokens=()) -> None:
    _check_vocab_merges(vocab, merges)
    _check_str("text", text)
    _check_special_in_vocab(vocab, merges, special_tokens)


def _validate_bpe_decode(vocab, ids) -> None:
    if not isinstance(vocab, (list, tuple)) or not vocab or type(vocab[-1]) is not bytes:
        raise TypeError("vocab must be a list of bytes (token id -> token bytes)")
    if not isinstance(ids, (list, tuple)):
        raise TypeError(f"ids must be a list of int, got {type(ids).__name__}")
    for i, token_id in enumerate(ids):
        if type(token_id) is not int:
            raise TypeError(f"ids[{i}] must be an int, got {type(token_id).__name__}")
        if not 0 <= token_id < len(vocab):
            raise ValueError(f"ids[{i}]={token_id} is not a token id (0 <= id < {len(vocab)})")


def _validate_encode_chunk(vocab, merges, buffer, chunk, special_tokens=()) -> None:
    _check_vocab_merges(vocab, merges)
    _check_str("buffer", buffer)
    if chunk is not None:
        _check_str("chunk", chunk)
    _check_special_in_vocab(vocab, merges, special_tokens)


def _validate_to_tokenizer_json(vocab, merges, special_tokens=()) -> None:
    _check_vocab_merges(vocab, merges)
    _check_special_in_vocab(vocab, merges, special_tokens)
    b2u = bytes_to_unicode()
    n_ordinary = 256 + len(merges)
    ordinary = {"".join(b2u[b] for b in token) for token in vocab[:n_ordinary]}
    for i in range(n_ordinary, len(vocab)):
        try:
            text = vocab[i].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"vocab[{i}] = {vocab[i]!r} is a special token but not UTF-8 text") from None
        if text in ordinary:
            raise ValueError(f"special token {text!r} (vocab[{i}]) is written like an ordinary token in the "
                             "byte-level alphabet: a tokenizer.json cannot tell the two apart")


# -- exercises ------------------------------------------------------------------------------------
@exercise("1.1", points=1, validate=_validate_word_tokenize)
def word_tokenize(text: str) -> list[str]:
    """Split ``text`` into words and punctuation, like the seed's ``nltk.word_tokenize`` example.

    Definition (with the meaning that Python's ``re`` module gives ``\\w`` and ``\\s`` for ``str``):
    a token is either a maximal run of word characters (``\\w+``: letters, digits and ``_`` of any
    script) or a single character that is neither a word character nor whitespace (each punctuation
    mark or symbol on its own). Whitespace separates tokens and is dropped.

    Args:
        text: any string.

    Returns:
        The tokens in text order, e.g. ``word_tokenize("Don't panic... 42!")`` is
        ``["Don", "'", "t", "panic", ".", ".", ".", "42", "!"]``; ``[]`` for empty or blank text.

    Hint:
        One regular expression with two alternatives does it; ``re.findall`` returns the matches.
    """
    raise NotImplementedError("Exercise 1.1: implement word_tokenize in tokenization.py")


@exercise("1.2", points=2, validate=_validate_pretokenize)
def pretokenize(text: str, special_tokens: list[str] = ()) -> list[str]:
    """Cut ``text`` into GPT-2 pre-tokens, keeping special tokens whole.

    Args:
        text: any string.
        special_tokens: strings that must come out as items of their own, never split. Find them
            leftmost first; where two start at the same position, the longer wins (with
            ``["<|a|>", "<|a|><|b|>"]`` the text ``"<|a|><|b|>"`` is one item).

    Returns:
        The pre-tokens in order: each special token occurrence as one item, and the text between
        them split with :data:`GPT2_SPLIT_PATTERN` (``regex.findall``). No empty strings, and
        ``"".join(pretokenize(text, special_tokens)) == text`` always (spaces are kept: ``" world"``
        keeps its leading space). ``pretokenize("Hi  there<|endoftext|>!", ["<|endoftext|>"])`` is
        ``["Hi", " ", " there", "<|endoftext|>", "!"]``.

    Hint:
        Use the ``regex`` package, not ``re`` (``\\p{L}``). For the special tokens, one alternation of
        the ``regex.escape``-d tokens, longest first, finds them; split the text around the matches.
    """
    raise NotImplementedError("Exercise 1.2: implement pretokenize in tokenization.py")


@exercise("1.3", points=4, validate=_validate_train_bpe)
def train_bpe(documents: list[str], vocab_size: int,
              special_tokens: list[str] = ()) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on ``documents``.

    Args:
        documents: the training texts. Each is pre-tokenized on its own with
            ``pretokenize(document, special_tokens)``; special-token occurrences are dropped from the
            training text (they are never part of a merge).
        vocab_size: the size of the returned vocabulary: 256 bytes + the merges + the special tokens.
        special_tokens: added at the end of the vocabulary, in this order (duplicates once).

    Returns:
        ``(vocab, merges)`` laid out as the module docstring says: ``vocab[i] == bytes([i])`` for
        ``i < 256``, ``vocab[256 + k] == merges[k][0] + merges[k][1]``, then the special tokens
        UTF-8 encoded. ``len(vocab) == vocab_size`` unless the corpus runs out of pairs first (every
        pre-token is a single token): then training stops early and the vocabulary is shorter.

    The algorithm: count each distinct pre-token once with its frequency, as a sequence of single
    bytes. Repeat: count every adjacent pair of tokens inside each pre-token (``"aaa"`` holds the pair
    ``(a, a)`` twice), weighted by frequency; take the most frequent pair, ties broken towards the
    lexicographically greatest ``(left, right)`` (module docstring); append it to ``merges`` and its
    concatenation to ``vocab``; replace its occurrences in every pre-token, left to right and without
    overlap (``a a a`` becomes ``aa a``).

    Hint:
        Recounting every pair after each merge is correct but slow. Only the pre-tokens that contain
        the merged pair change: keep the pair counts, and an index pair -> pre-tokens containing it,
        and update both for those pre-tokens only. A heap (``heapq``) finds the best pair quickly.
    """
    raise NotImplementedError("Exercise 1.3: implement train_bpe in tokenization.py")


@exercise("1.4", points=3, validate=_validate_bpe_encode)
def bpe_encode(vocab: list[bytes], merges: list[tuple[bytes, bytes]], text: str,
               special_tokens: list[str] = ()) -> list[int]:
    """Encode ``text`` to token ids with a trained BPE tokenizer.

    Args:
        vocab, merges: as :func:`train_bpe` returns them.
        text: any string.
        special_tokens: the special tokens to recognise in ``text`` (each must be in ``vocab``);
            other occurrences of their text are encoded as ordinary text.

    Returns:
        The ids. ``text`` is pre-tokenized (:func:`pretokenize`); a special token becomes its id
        (its position in ``vocab``); every other pre-token becomes the ids of its UTF-8 bytes, then the
        merges are applied **by rank**: repeatedly find the adjacent pair with the lowest merge index
        among the pairs that are merges, and merge it (all its occurrences, left to right), until no
        adjacent pair is a merge. The same ids as ``tiktoken`` built from these ranks.

    Hint:
        Applying merges in the order they occur in the text (left to right) gives different tokens:
        with merges ``[(b"b", b"c"), (b"a", b"b")]``, ``"abc"`` is ``a`` + ``bc``, not ``ab`` + ``c``.
        Many pre-tokens repeat (``" the"``): cache the ids of each distinct pre-token.
    """
    raise NotImplementedError("Exercise 1.4: implement bpe_encode in tokenization.py")


@exercise("1.5", points=1, validate=_validate_bpe_decode)
def bpe_decode(vocab: list[bytes], ids: list[int]) -> str:
    """Decode token ids back to text.

    Args:
        vocab: token id -> token bytes.
        ids: token ids, each ``0 <= id < len(vocab)``.

    Returns:
        The concatenated bytes of the tokens, decoded as UTF-8; invalid UTF-8 (ids that cut a
        multi-byte character, like the first byte of ``"é"`` alone) becomes U+FFFD (``"\\ufffd"``),
        it does not raise. ``bpe_decode(vocab, bpe_encode(vocab, merges, s)) == s`` for every ``s``.

    Hint:
        A token can end in the middle of a character: decode the whole byte string, not token by token.
    """
    raise NotImplementedError("Exercise 1.5: implement bpe_decode in tokenization.py")


@exercise("1.6", points=2, validate=_validate_encode_chunk)
def encode_chunk(vocab: list[bytes], merges: list[tuple[bytes, bytes]], buffer: str, chunk: str | None,
                 special_tokens: list[str] = ()) -> tuple[list[int], str]:
    """One step of streaming encoding: the ids that ``buffer + chunk`` fixes, and what to keep.

    :func:`encode_iterable` calls it once per chunk of a stream (a large file read piece by piece),
    passing back the buffer it returned, and once more with ``chunk=None`` at the end. The ids of all
    steps, concatenated, must equal ``bpe_encode(vocab, merges, "".join(chunks), special_tokens)``,
    wherever the chunk boundaries fall: inside a word, inside a run of spaces, inside a special token.

    Args:
        vocab, merges, special_tokens: as for :func:`bpe_encode`.
        buffer: text carried over from the previous step (``""`` at the start).
        chunk: the next piece of the stream, or ``None`` when the stream has ended.

    Returns:
        ``(ids, new_buffer)``: ``ids`` encode a prefix of ``buffer + chunk`` that no later text can
        change, and ``new_buffer`` is the rest. With ``chunk=None`` everything is encoded and
        ``new_buffer`` is ``""``. Memory must stay bounded: keep only what the next chunk could still
        change, i.e. the last pre-token (``" wor"`` may become ``" world"``) and, after it, an
        unfinished special token (``"<|endof"``). A buffer that grows with the stream fails.

    Hint:
        First hold back the end of the text from the first place where a special token may start and
        run past the end (``"<|endof"``; or a complete ``"<s>"`` when ``"<s><s>"`` is a special token
        too), skipping places inside a special token that the text already holds in full (in
        ``"<s><s>"`` the second ``"<s>"`` is part of the first match). Pre-tokenize the rest: every
        pre-token but the last is final, and so is a special token.
    """
    raise NotImplementedError("Exercise 1.6: implement encode_chunk in tokenization.py")


@exercise("1.7", points=2, validate=_validate_to_tokenizer_json)
def to_tokenizer_json(vocab: list[bytes], merges: list[tuple[bytes, bytes]],
                      special_tokens: list[str] = ()) -> str:
    """The ``tokenizer.json`` text of this tokenizer, for Hugging Face ``tokenizers``/``transformers``.

    Args:
        vocab, merges, special_tokens: as :func:`train_bpe` returns them and :func:`bpe_encode` uses them.

    Returns:
        A JSON string that ``tokenizers.Tokenizer.from_str`` loads, and that gives the same ids as
        ``bpe_encode`` on every text (special tokens included) and decodes them back. Its parts:

        - ``"model"``: ``{"type": "BPE", "vocab": {token: id}, "merges": [[left, right], ...], ...}``
          where every ordinary token (id below ``256 + len(merges)``) is written in GPT-2's byte-level
          alphabet, ``"".join(b2u[b] for b in token_bytes)`` with ``b2u = bytes_to_unicode()``, and
          every special token of ``vocab`` (listed in ``special_tokens`` or not) as its own text at its
          id; merges in rank order.
        - ``"pre_tokenizer"``: a ``Sequence`` of a ``Split`` with ``{"Regex": GPT2_SPLIT_PATTERN}``
          (``"behavior": "Isolated"``) and a ``ByteLevel`` with ``"use_regex": false`` and
          ``"add_prefix_space": false`` (it maps bytes to the byte-level alphabet).
        - ``"decoder"``: ``{"type": "ByteLevel", ...}``.
        - ``"added_tokens"``: one entry per token of ``special_tokens`` with its id, ``"special": true``
          and ``"normalized": false``, so it is matched in the raw text and never split.

        ``special_tokens`` may be any subset of the special tokens in ``vocab``, in any order. Hugging
        Face does not read an added token's ``"id"``: it takes the id from the model's ``"vocab"`` where
        the token's text is there, and otherwise numbers the added tokens after the model's vocabulary in
        list order. That is why the model's vocabulary holds every special token at its id.

    Hint:
        Build a tiny tokenizer with ``tokenizers`` (``Tokenizer(models.BPE(...))``, ``pre_tokenizers``,
        ``add_special_tokens``) and print ``to_str()`` to see every field the format expects.
    """
    raise NotImplementedError("Exercise 1.7: implement to_tokenizer_json in tokenization.py")


# -- implemented: what the exercises are used for -------------------------------------------------
def char_tokenize(text: str) -> list[str]:
    """The simplest tokenizer: one token per Unicode character (``list(text)``)."""
    _check_str("text", text)
    return list(text)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: one printable character for each of the 256 byte values.

    Printable Latin-1 bytes map to themselves; the others (control characters, space, ...) map to
    ``chr(256 + n)`` in order, so a space is ``"Ġ"`` and a newline ``"Ċ"``. ``tokenizer.json`` files
    write every token's bytes in this alphabet (a JSON string cannot hold arbitrary bytes).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def encode_iterable(vocab: list[bytes], merges: list[tuple[bytes, bytes]], chunks: Iterable[str],
                    special_tokens: list[str] = (), block_size: int = 1 << 16) -> Iterator[int]:
    """Token ids of a stream of text chunks (e.g. an open file, line by line), in bounded memory.

    Yields exactly the ids of ``bpe_encode(vocab, merges, "".join(chunks), special_tokens)``, one
    :func:`encode_chunk` step per block of about ``block_size`` characters (small chunks, like the
    lines of a file, are gathered into blocks first), without ever holding the whole text.
    """
    buffer, block, size = "", [], 0
    for chunk in chunks:
        block.append(chunk)
        size += len(chunk)
        if size >= block_size:
            ids, buffer = encode_chunk(vocab, merges, buffer, "".join(block), special_tokens)
            yield from ids
            block, size = [], 0
    if block:
        ids, buffer = encode_chunk(vocab, merges, buffer, "".join(block), special_tokens)
        yield from ids
    ids, _ = encode_chunk(vocab, merges, buffer, None, special_tokens)
    yield from ids


class BPETokenizer:
    """A trained byte-level BPE tokenizer: vocabulary, merges and special tokens, with the exercises
    as its methods.

    ``BPETokenizer.train(documents, vocab_size, special_tokens)`` trains one, ``encode``/``decode``
    convert, ``save``/``load`` write and read GPT-2-style ``vocab.json`` + ``merges.txt`` files, and
    ``to_transformers()`` wraps it as a ``transformers`` tokenizer for the later chapters.
    """

    def __init__(self, vocab: list[bytes], merges: list[tuple[bytes, bytes]], special_tokens: Iterable[str] = ()):
        self.vocab = list(vocab)
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.special_tokens = list(dict.fromkeys(special_tokens))
        _check_vocab_merges(self.vocab, self.merges, full=True)
        _check_special_in_vocab(self.vocab, self.merges, self.special_tokens)

    @classmethod
    def train(cls, documents: list[str], vocab_size: int, special_tokens: Iterable[str] = ()) -> "BPETokenizer":
        """Train on ``documents`` with :func:`train_bpe`."""
        special_tokens = list(dict.fromkeys(special_tokens))
        vocab, merges = train_bpe(list(documents), vocab_size, special_tokens)
        return cls(vocab, merges, special_tokens)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={len(self.vocab)}, merges={len(self.merges)}, special_tokens={self.special_tokens})"

    def token_id(self, special_token: str) -> int:
        """The id of a special token (its last position in the vocabulary)."""
        if special_token not in self.special_tokens:
            raise KeyError(f"{special_token!r} is not a special token of this tokenizer {self.special_tokens}")
        target = special_token.encode("utf-8")
        return max(i for i in range(256 + len(self.merges), len(self.vocab)) if self.vocab[i] == target)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens recognised)."""
        return bpe_encode(self.vocab, self.merges, text, self.special_tokens)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (invalid UTF-8 becomes U+FFFD)."""
        return bpe_decode(self.vocab, [int(i) for i in ids])

    def encode_iterable(self, chunks: Iterable[str]) -> Iterator[int]:
        """Token ids of a stream of text chunks, in bounded memory (see :func:`encode_iterable`)."""
        return encode_iterable(self.vocab, self.merges, chunks, self.special_tokens)

    def tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` as readable strings (invalid UTF-8 pieces shown as U+FFFD)."""
        return [self.vocab[i].decode("utf-8", errors="replace") for i in self.encode(text)]

    def to_json(self) -> str:
        """The ``tokenizer.json`` text (:func:`to_tokenizer_json`)."""
        return to_tokenizer_json(self.vocab, self.merges, self.special_tokens)

    def to_transformers(self):
        """A ``transformers`` tokenizer (``PreTrainedTokenizerFast``) with the same ids.

        ``bos`` and ``eos`` are ``"<|endoftext|>"`` and ``pad`` is ``"<|pad|>"`` when those are special
        tokens; the other special tokens are registered as extra special tokens.
        """
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        names = {}
        if "<|endoftext|>" in self.special_tokens:
            names.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
        if "<|pad|>" in self.special_tokens:
            names.update(pad_token="<|pad|>")
        extra = [t for t in self.special_tokens if t not in names.values()]
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(self.to_json()),
                                       extra_special_tokens=extra, **names)

    # -- files ------------------------------------------------------------------------------------
    def save(self, directory: Path | str) -> Path:
        """Write ``vocab.json`` (byte-level token text -> id), ``merges.txt`` and ``special_tokens.json``."""
        from course_lib.cache import write_atomic

        directory = Path(directory)
        b2u = bytes_to_unicode()
        n_ordinary = 256 + len(self.merges)
        as_text = lambda token: "".join(b2u[b] for b in token)  # noqa: E731
        vocab = {as_text(t): i for i, t in enumerate(self.vocab[:n_ordinary])}
        if len(vocab) < n_ordinary:
            raise ValueError("the vocabulary holds the same token twice; vocab.json cannot store that")
        for i in range(n_ordinary, len(self.vocab)):
            text = self.vocab[i].decode("utf-8")
            if text in vocab:
                raise ValueError(f"special token {text!r} has the same text as token {vocab[text]}")
            vocab[text] = i
        merges = "".join(f"{as_text(a)} {as_text(b)}\n" for a, b in self.merges)
        write_atomic(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=0))
        write_atomic(directory / "merges.txt", "#version: 0.2\n" + merges)
        write_atomic(directory / "special_tokens.json", json.dumps(self.special_tokens, ensure_ascii=False))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> "BPETokenizer":
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        u2b = {c: b for b, c in bytes_to_unicode().items()}
        vocab_json = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        special_tokens = json.loads((directory / "special_tokens.json").read_text(encoding="utf-8"))
        lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
        to_bytes = lambda text: bytes(u2b[c] for c in text)  # noqa: E731
        merges = [tuple(to_bytes(part) for part in line.split(" ")) for line in lines[1:] if line]
        vocab: list[bytes | None] = [None] * len(vocab_json)
        n_ordinary = 256 + len(merges)
        for text, i in vocab_json.items():
            vocab[i] = to_bytes(text) if i < n_ordinary else text.encode("utf-8")
        return cls(vocab, merges, special_tokens)


def train_course_tokenizer(vocab_size: int = COURSE_VOCAB_SIZE, special_tokens: Iterable[str] = COURSE_SPECIAL_TOKENS,
                           source: str | None = None) -> BPETokenizer:
    """The course's tokenizer: BPE trained on the ``train`` split of the course corpus, cached.

    Trained on first use and then loaded from the course cache. In solution mode the reference
    ``train_bpe`` trains it; in student mode your own does, and the cache entry is keyed by the text of
    this module, so editing your code retrains it.

    Args:
        vocab_size: the vocabulary size (256 bytes + merges + special tokens).
        special_tokens: defaults to :data:`COURSE_SPECIAL_TOKENS`.
        source: the corpus source (see :func:`course_lib.corpus.load_corpus`); ``None`` for the built-in one.
    """
    from course_lib import exercises
    from course_lib.cache import building, cache_entry, cache_key
    from course_lib.corpus import corpus_cache_path, load_corpus

    special_tokens = list(dict.fromkeys(special_tokens))
    key = cache_key(vocab_size, special_tokens, corpus_cache_path(source).name, exercises.implementation("tokenization"))
    directory = cache_entry("tokenizers", f"bpe-{vocab_size}-{key}")
    with building(directory):
        if (directory / "special_tokens.json").is_file():
            return BPETokenizer.load(directory)
        tokenizer = BPETokenizer.train(load_corpus("train", source), vocab_size, special_tokens)
        tokenizer.save(directory)
    return tokenizer
