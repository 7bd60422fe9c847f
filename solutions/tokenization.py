"""Reference solutions for Chapter 1 (course_lib/tokenization.py)."""

from __future__ import annotations

import functools
import heapq
import json
import re
from collections import Counter, defaultdict

import regex

from course_lib.tokenization import GPT2_SPLIT_PATTERN, bytes_to_unicode

WORD_OR_SYMBOL = re.compile(r"\w+|[^\w\s]")
GPT2_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)


def word_tokenize(text: str) -> list[str]:
    return WORD_OR_SYMBOL.findall(text)


# -- 1.2 pre-tokenization -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _special_pattern(special_tokens: tuple[str, ...]) -> regex.Pattern | None:
    """One alternation of the special tokens, longest first: at a position the longest one matches."""
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("|".join(regex.escape(token) for token in ordered))


def _split_special(text: str, special_tokens) -> list[tuple[str, bool]]:
    """``text`` as (segment, is_special) parts, leftmost-longest special tokens; no empty segments."""
    pattern = _special_pattern(tuple(special_tokens))
    if pattern is None:
        return [(text, False)] if text else []
    parts, start = [], 0
    for match in pattern.finditer(text):
        if match.start() > start:
            parts.append((text[start:match.start()], False))
        parts.append((match.group(), True))
        start = match.end()
    if start < len(text):
        parts.append((text[start:], False))
    return parts


def pretokenize(text: str, special_tokens: list[str] = ()) -> list[str]:
    pieces = []
    for segment, is_special in _split_special(text, special_tokens):
        if is_special:
            pieces.append(segment)
        else:
            pieces.extend(GPT2_SPLIT.findall(segment))
    return pieces


# -- 1.3 training ---------------------------------------------------------------------------------------
def _merge(ids: list[int], left: int, right: int, new_id: int) -> list[int]:
    """``ids`` with every ``left, right`` (scanned left to right, no overlap) replaced by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == left and ids[i + 1] == right:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _descending(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in *reverse* lexicographic order (the heap pops the smallest).

    Each byte ``x`` becomes ``255 - x``, and an end marker 256 (larger than any byte) makes a prefix
    sort after its extensions, since ``b"a" < b"aa"`` must become ``key(b"a") > key(b"aa")``.
    """
    return (*(255 - x for x in token), 256)


def train_bpe(documents: list[str], vocab_size: int,
              special_tokens: list[str] = ()) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    special_tokens = list(dict.fromkeys(special_tokens))
    specials = set(special_tokens)
    n_merges = vocab_size - 256 - len(special_tokens)

    # The pre-token frequency table: each distinct pre-token once, as a list of byte ids.
    frequency = Counter(piece for doc in documents for piece in pretokenize(doc, special_tokens)
                        if piece not in specials)
    words = [list(piece.encode("utf-8")) for piece in frequency]
    counts = list(frequency.values())

    # pair -> weighted count, and pair -> indices of the words that contain it.
    pair_count: Counter = Counter()
    pair_words: defaultdict = defaultdict(set)
    for w, (ids, n) in enumerate(zip(words, counts)):
        for pair in zip(ids, ids[1:]):
            pair_count[pair] += n
            pair_words[pair].add(w)

    vocab = [bytes([b]) for b in range(256)]
    keys = [_descending(token) for token in vocab]  # tie-break keys, per token id

    def entry(pair, count):  # max count first; then the greatest (left, right) bytes
        return (-count, keys[pair[0]], keys[pair[1]], pair)

    # A max-heap with lazy deletion: an entry is stale when the pair's count has changed since.
    heap = [entry(pair, count) for pair, count in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair) != -neg_count:
            continue  # stale
        left, right = pair
        new_id = len(vocab)
        vocab.append(vocab[left] + vocab[right])
        keys.append(_descending(vocab[-1]))
        merges.append((vocab[left], vocab[right]))

        # Only the words that contain the pair change: take their old pairs out, put the new ones in.
        changed = set()
        for w in pair_words.pop(pair):
            old, n = words[w], counts[w]
            new = _merge(old, left, right, new_id)
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for p in old_pairs:
                pair_count[p] -= n
            for p in new_pairs:
                pair_count[p] += n
                pair_words[p].add(w)
            for p in set(old_pairs) - set(new_pairs):
                pair_words[p].discard(w)
            changed.update(old_pairs, new_pairs)
            words[w] = new
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, entry(p, pair_count[p]))
            else:
                del pair_count[p]
                pair_words.pop(p, None)

    vocab.extend(token.encode("utf-8") for token in special_tokens)
    return vocab, merges


# -- 1.4 encoding ---------------------------------------------------------------------------------------
def _special_ids(vocab: list[bytes], n_ordinary: int, special_tokens) -> dict[str, int]:
    """Each special token's id: its position among the special tokens at the end of ``vocab``."""
    ids = {}
    for i in range(n_ordinary, len(vocab)):
        ids[vocab[i]] = i
    return {token: ids[token.encode("utf-8")] for token in special_tokens}


class _Encoder:
    """The merge ranks of one tokenizer, and the ids of every pre-token seen so far."""

    def __init__(self, merges: tuple[tuple[bytes, bytes], ...]):
        token_id = {bytes([b]): b for b in range(256)}
        self.ranks = {}
        for rank, (left, right) in enumerate(merges):
            self.ranks[token_id[left], token_id[right]] = rank
            token_id[left + right] = 256 + rank
        self.cache: dict[str, list[int]] = {}

    def encode_piece(self, piece: str) -> list[int]:
        ids = self.cache.get(piece)
        if ids is None:
            ids = list(piece.encode("utf-8"))
            while len(ids) > 1:
                # the adjacent pair with the lowest rank; pairs that are not merges rank last
                pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
                rank = self.ranks.get(pair)
                if rank is None:
                    break
                ids = _merge(ids, pair[0], pair[1], 256 + rank)
            if len(self.cache) < 1_000_000:
                self.cache[piece] = ids
        return ids


@functools.lru_cache(maxsize=8)
def _encoder(merges: tuple[tuple[bytes, bytes], ...]) -> _Encoder:
    return _Encoder(merges)


def bpe_encode(vocab: list[bytes], merges: list[tuple[bytes, bytes]], text: str,
               special_tokens: list[str] = ()) -> list[int]:
    encoder = _encoder(tuple(map(tuple, merges)))
    special_id = _special_ids(vocab, 256 + len(merges), special_tokens)
    ids = []
    for piece in pretokenize(text, special_tokens):
        if piece in special_id:
            ids.append(special_id[piece])
        else:
            ids.extend(encoder.encode_piece(piece))
    return ids


# -- 1.5 decoding ---------------------------------------------------------------------------------------
def bpe_decode(vocab: list[bytes], ids: list[int]) -> str:
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


# -- 1.6 streaming --------------------------------------------------------------------------------------
def _unfinished_special_start(text: str, special_tokens) -> int:
    """Where the end of ``text`` that may still become a special token begins (``len(text)`` if nowhere).

    That is the first position ``q`` where ``text[q:]`` is a proper prefix of a special token (``"<|endof"``,
    or a complete ``"<s>"`` that may grow into ``"<s><s>"``), unless ``q`` lies inside a special token
    already found in ``text``: then that one is complete and cannot grow, since it starts before ``q``.
    """
    starts = sorted({len(text) - n for token in special_tokens for n in range(1, min(len(token), len(text) + 1))
                     if text.endswith(token[:n])})
    if not starts:
        return len(text)
    found = [(m.start(), m.end()) for m in _special_pattern(tuple(special_tokens)).finditer(text)]
    return next((q for q in starts if not any(a < q < b for a, b in found)), len(text))


def encode_chunk(vocab: list[bytes], merges: list[tuple[bytes, bytes]], buffer: str, chunk: str | None,
                 special_tokens: list[str] = ()) -> tuple[list[int], str]:
    if chunk is None:
        return bpe_encode(vocab, merges, buffer, special_tokens), ""
    text = buffer + chunk
    held = _unfinished_special_start(text, special_tokens)   # "<|endof" may still become a special token
    ready, rest = text[:held], text[held:]
    pieces = pretokenize(ready, special_tokens)
    if pieces and pieces[-1] not in special_tokens:    # the last pre-token may still grow
        rest = pieces.pop() + rest
    return bpe_encode(vocab, merges, "".join(pieces), special_tokens), rest


# -- 1.7 tokenizer.json ----------------------------------------------------------------------------------
def to_tokenizer_json(vocab: list[bytes], merges: list[tuple[bytes, bytes]],
                      special_tokens: list[str] = ()) -> str:
    b2u = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(b2u[b] for b in token)

    n_ordinary = 256 + len(merges)
    special_id = _special_ids(vocab, n_ordinary, special_tokens)
    # Hugging Face takes an added token's id from the model's vocabulary when its text is there, and
    # otherwise numbers it after the last one, in list order (the "id" field is not read). So every
    # special token of vocab sits in the model's vocabulary at its id, and "added_tokens" lists the ones
    # to recognise: a subset, in any order, gets the ids bpe_encode gives.
    model_vocab = {as_text(vocab[i]): i for i in range(n_ordinary)}
    model_vocab.update((vocab[i].decode("utf-8"), i) for i in range(n_ordinary, len(vocab)))
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": special_id[token], "content": token, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for token in dict.fromkeys(special_tokens)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GPT2_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": model_vocab,
            "merges": [[as_text(left), as_text(right)] for left, right in merges],
        },
    }
    return json.dumps(tokenizer, ensure_ascii=False)
