"""Plausible wrong answers to Chapter 1's exercises. Each must fail at least one graded test
(``pytest --against mutants``). They are kept out of the student handout.

They run in solution mode, so where a wrong variant needs a correct piece of another exercise
(``pretokenize`` inside ``bpe_encode``) it calls ``course_lib.tokenization``, which runs the reference.
"""

import json
import re
from collections import Counter

import regex

from course_lib import tokenization as T
from course_lib.tokenization import GPT2_SPLIT_PATTERN
from tests.test_tokenization import merge_word

LONGEST_FIRST = lambda tokens: sorted(set(tokens), key=len, reverse=True)  # noqa: E731


# -- 1.1 word_tokenize --------------------------------------------------------------------------------
def word_tokenize_on_whitespace(text):
    return text.split()


def word_tokenize_dropping_punctuation(text):
    return re.findall(r"\w+", text)


def word_tokenize_grouping_punctuation(text):
    return re.findall(r"\w+|[^\w\s]+", text)


def word_tokenize_ascii_only(text):
    return re.findall(r"\w+|[^\w\s]", text, flags=re.ASCII)


# -- 1.2 pretokenize ----------------------------------------------------------------------------------
def _split_specials(text, special_tokens, order=LONGEST_FIRST, escape=regex.escape):
    if not special_tokens:
        return [(text, False)]
    pattern = "(" + "|".join(escape(t) for t in order(special_tokens)) + ")"
    parts = regex.split(pattern, text)
    return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


def _pretokenize_with(pattern, text, special_tokens, **split):
    out = []
    for segment, is_special in _split_specials(text, special_tokens, **split):
        out += [segment] if is_special else regex.findall(pattern, segment)
    return out


def pretokenize_without_leading_spaces(text, special_tokens=()):
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return _pretokenize_with(pattern, text, special_tokens)


def pretokenize_stripping_spaces(text, special_tokens=()):
    return [p.strip() for p in _pretokenize_with(GPT2_SPLIT_PATTERN, text, special_tokens) if p.strip()]


def pretokenize_ignoring_special_tokens(text, special_tokens=()):
    return regex.findall(GPT2_SPLIT_PATTERN, text)


def pretokenize_special_tokens_in_given_order(text, special_tokens=()):
    return _pretokenize_with(GPT2_SPLIT_PATTERN, text, special_tokens, order=list)


def pretokenize_unescaped_special_tokens(text, special_tokens=()):
    return _pretokenize_with(GPT2_SPLIT_PATTERN, text, special_tokens, escape=str)


def pretokenize_ascii_pattern(text, special_tokens=()):
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
    return _pretokenize_with(pattern, text, special_tokens)


# -- 1.3 train_bpe ------------------------------------------------------------------------------------
def _train(documents, vocab_size, special_tokens, *, pick=lambda c: max(c, key=lambda p: (c[p], p)),
           pieces=lambda doc, specials: [p for p in T.pretokenize(doc, specials) if p not in specials],
           weighted=True, specials_first=False):
    """A slow BPE trainer with the knobs that the wrong variants turn."""
    special_tokens = list(dict.fromkeys(special_tokens))
    words = Counter(tuple(bytes([b]) for b in p.encode()) for doc in documents for p in pieces(doc, special_tokens))
    merges = []
    while 256 + len(merges) + len(special_tokens) < vocab_size:
        counts = Counter()
        for word, n in words.items():
            for pair in (zip(word, word[1:]) if weighted else set(zip(word, word[1:]))):
                counts[pair] += n if weighted else 1
        if not counts:
            break
        best = pick(counts)
        merges.append(best)
        merged = Counter()
        for word, n in words.items():
            merged[merge_word(word, best)] += n
        words = merged
    specials = [t.encode() for t in special_tokens]
    body = [bytes([b]) for b in range(256)] + [a + b for a, b in merges]
    return (specials + body if specials_first else body + specials), merges


def train_bpe_ties_by_dict_order(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, special_tokens, pick=lambda c: max(c, key=c.get))


def train_bpe_ties_to_smallest_pair(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, special_tokens, pick=lambda c: min(c, key=lambda p: (-c[p], p)))


def train_bpe_across_pre_tokens(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, special_tokens,
                  pieces=lambda doc, specials: [s for s, sp in _split_specials(doc, specials) if not sp])


def train_bpe_on_special_token_text(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, special_tokens, pieces=lambda doc, specials: T.pretokenize(doc))


def train_bpe_counting_pairs_once_per_word(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, special_tokens, weighted=False)


def train_bpe_special_tokens_first(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, special_tokens, specials_first=True)


def train_bpe_on_joined_documents(documents, vocab_size, special_tokens=()):
    return _train(["".join(documents)], vocab_size, special_tokens)


# -- 1.4 bpe_encode -----------------------------------------------------------------------------------
def _special_ids(vocab, merges, special_tokens):
    return {t: max(i for i in range(256 + len(merges), len(vocab)) if vocab[i] == t.encode()) for t in special_tokens}


def _encode_pieces(vocab, merges, pieces, special_tokens, encode_piece):
    ids, specials = [], _special_ids(vocab, merges, special_tokens)
    for piece in pieces:
        ids += [specials[piece]] if piece in specials else encode_piece(piece.encode())
    return ids


def _by_rank(merges):
    rank = {pair: k for k, pair in enumerate(merges)}

    def encode_piece(data):
        parts = [bytes([b]) for b in data]
        while True:
            pairs = [p for p in zip(parts, parts[1:]) if p in rank]
            if not pairs:
                break
            parts = list(merge_word(tuple(parts), min(pairs, key=rank.get)))
        return parts

    return encode_piece


def _ids(vocab, merges, parts):
    index = {t: i for i, t in enumerate(vocab[:256 + len(merges)])}
    return [index[p] for p in parts]


def bpe_encode_left_to_right(vocab, merges, text, special_tokens=()):
    merge_set = set(map(tuple, merges))

    def encode_piece(data):
        parts = [bytes([b]) for b in data]
        while True:
            first = next((p for p in zip(parts, parts[1:]) if p in merge_set), None)
            if first is None:
                return _ids(vocab, merges, parts)
            parts = list(merge_word(tuple(parts), first))

    return _encode_pieces(vocab, merges, T.pretokenize(text, special_tokens), special_tokens, encode_piece)


def bpe_encode_across_pre_tokens(vocab, merges, text, special_tokens=()):
    pieces = [s for s, _ in _split_specials(text, special_tokens)]
    encode = _by_rank(list(map(tuple, merges)))
    return _encode_pieces(vocab, merges, pieces, special_tokens, lambda data: _ids(vocab, merges, encode(data)))


def bpe_encode_ignoring_special_tokens(vocab, merges, text, special_tokens=()):
    encode = _by_rank(list(map(tuple, merges)))
    return _encode_pieces(vocab, merges, T.pretokenize(text), (), lambda data: _ids(vocab, merges, encode(data)))


def bpe_encode_longest_match(vocab, merges, text, special_tokens=()):
    index = {t: i for i, t in enumerate(vocab[:256 + len(merges)])}

    def encode_piece(data):
        ids, i = [], 0
        while i < len(data):
            n = max(n for n in range(1, len(data) - i + 1) if data[i:i + n] in index)
            ids.append(index[data[i:i + n]])
            i += n
        return ids

    return _encode_pieces(vocab, merges, T.pretokenize(text, special_tokens), special_tokens, encode_piece)


# -- 1.5 bpe_decode -----------------------------------------------------------------------------------
def bpe_decode_token_by_token(vocab, ids):
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def bpe_decode_strict(vocab, ids):
    return b"".join(vocab[i] for i in ids).decode("utf-8")


def bpe_decode_ignoring_errors(vocab, ids):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


def bpe_decode_latin1(vocab, ids):
    return b"".join(vocab[i] for i in ids).decode("latin-1")


# -- 1.6 encode_chunk ---------------------------------------------------------------------------------
def encode_chunk_independently(vocab, merges, buffer, chunk, special_tokens=()):
    return T.bpe_encode(vocab, merges, buffer + (chunk or ""), special_tokens), ""


def encode_chunk_holding_everything(vocab, merges, buffer, chunk, special_tokens=()):
    if chunk is None:
        return T.bpe_encode(vocab, merges, buffer, special_tokens), ""
    return [], buffer + chunk


def encode_chunk_ignoring_unfinished_special_tokens(vocab, merges, buffer, chunk, special_tokens=()):
    if chunk is None:
        return T.bpe_encode(vocab, merges, buffer, special_tokens), ""
    pieces = T.pretokenize(buffer + chunk, special_tokens)
    rest = pieces.pop() if pieces and pieces[-1] not in special_tokens else ""
    return T.bpe_encode(vocab, merges, "".join(pieces), special_tokens), rest


def encode_chunk_cutting_at_the_last_space(vocab, merges, buffer, chunk, special_tokens=()):
    if chunk is None:
        return T.bpe_encode(vocab, merges, buffer, special_tokens), ""
    text = buffer + chunk
    cut = max(text.rfind(" "), text.rfind("\n")) + 1
    return T.bpe_encode(vocab, merges, text[:cut], special_tokens), text[cut:]


def encode_chunk_dropping_the_buffer_at_the_end(vocab, merges, buffer, chunk, special_tokens=()):
    from solutions.tokenization import encode_chunk

    return ([], "") if chunk is None else encode_chunk(vocab, merges, buffer, chunk, special_tokens)


# -- 1.7 to_tokenizer_json ----------------------------------------------------------------------------
def _edit_reference(vocab, merges, special_tokens, edit):
    tokenizer = json.loads(T.to_tokenizer_json(vocab, merges, special_tokens))
    edit(tokenizer)
    return json.dumps(tokenizer)


def tokenizer_json_without_byte_level_alphabet(vocab, merges, special_tokens=()):
    def edit(tok):
        latin1 = lambda b: b.decode("latin-1")  # noqa: E731
        tok["model"]["vocab"] = {latin1(vocab[i]): i for i in range(256 + len(merges))}
        tok["model"]["merges"] = [[latin1(a), latin1(b)] for a, b in merges]
    return _edit_reference(vocab, merges, special_tokens, edit)


def tokenizer_json_without_byte_level_pre_tokenizer(vocab, merges, special_tokens=()):
    def edit(tok):
        tok["pre_tokenizer"] = tok["pre_tokenizer"]["pretokenizers"][0]
    return _edit_reference(vocab, merges, special_tokens, edit)


def tokenizer_json_merges_sorted(vocab, merges, special_tokens=()):
    def edit(tok):
        tok["model"]["merges"] = sorted(tok["model"]["merges"])
    return _edit_reference(vocab, merges, special_tokens, edit)


def tokenizer_json_special_tokens_in_vocab_only(vocab, merges, special_tokens=()):
    def edit(tok):
        for added in tok.pop("added_tokens"):
            tok["model"]["vocab"][added["content"]] = added["id"]
        tok["added_tokens"] = []
    return _edit_reference(vocab, merges, special_tokens, edit)


def tokenizer_json_without_split_pre_tokenizer(vocab, merges, special_tokens=()):
    def edit(tok):
        tok["pre_tokenizer"] = tok["pre_tokenizer"]["pretokenizers"][1]
    return _edit_reference(vocab, merges, special_tokens, edit)


# -- wrong answers written from the contract alone (issue 16): types, arguments, special tokens -------
def word_tokenize_with_the_regex_modules_word_class(text):
    return regex.findall(r"\w+|[^\w\s]", text)


def word_tokenize_returning_a_tuple(text):
    return tuple(re.findall(r"\w+|[^\w\s]", text))


def pretokenize_sorting_the_callers_special_tokens(text, special_tokens=()):
    special_tokens.sort(key=len, reverse=True)
    return _pretokenize_with(GPT2_SPLIT_PATTERN, text, special_tokens, order=list)


def pretokenize_splitting_by_each_special_token_in_turn(text, special_tokens=()):
    parts = [(text, False)] if text else []
    for token in LONGEST_FIRST(special_tokens):
        split = []
        for part, is_special in parts:
            if is_special:
                split.append((part, True))
                continue
            for i, piece in enumerate(part.split(token)):
                if i:
                    split.append((token, True))
                if piece:
                    split.append((piece, False))
        parts = split
    return [p for part, is_special in parts for p in ([part] if is_special else regex.findall(GPT2_SPLIT_PATTERN, part))]


def pretokenize_returning_a_tuple(text, special_tokens=()):
    return tuple(_pretokenize_with(GPT2_SPLIT_PATTERN, text, special_tokens))


def train_bpe_ties_by_concatenated_bytes(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, special_tokens, pick=lambda c: max(c, key=lambda p: (c[p], p[0] + p[1])))


def train_bpe_deduplicating_special_tokens_with_a_set(documents, vocab_size, special_tokens=()):
    return _train(documents, vocab_size, sorted(set(special_tokens)))


def train_bpe_keeping_duplicate_special_tokens(documents, vocab_size, special_tokens=()):
    vocab, merges = _train(documents, vocab_size - len(special_tokens) + len(set(special_tokens)), special_tokens)
    return vocab[:256 + len(merges)] + [t.encode() for t in special_tokens], merges


def train_bpe_returning_merges_as_lists(documents, vocab_size, special_tokens=()):
    vocab, merges = _train(documents, vocab_size, special_tokens)
    return vocab, [list(pair) for pair in merges]


def _encode_by_rank(vocab, merges, pieces, special_id):
    encode = _by_rank(list(map(tuple, merges)))
    ids = []
    for piece in pieces:
        ids += [special_id[piece]] if piece in special_id else _ids(vocab, merges, encode(piece.encode()))
    return ids


def bpe_encode_special_ids_from_their_place_in_the_list(vocab, merges, text, special_tokens=()):
    special_id = {t: 256 + len(merges) + k for k, t in enumerate(special_tokens)}
    return _encode_by_rank(vocab, merges, T.pretokenize(text, special_tokens), special_id)


def bpe_encode_special_ids_by_first_match_in_vocab(vocab, merges, text, special_tokens=()):
    special_id = {t: vocab.index(t.encode()) for t in special_tokens}
    return _encode_by_rank(vocab, merges, T.pretokenize(text, special_tokens), special_id)


_PIECE_CACHE = {}


def bpe_encode_caching_pieces_across_tokenizers(vocab, merges, text, special_tokens=()):
    special_id = _special_ids(vocab, merges, special_tokens)
    ids = []
    for piece in T.pretokenize(text, special_tokens):
        if piece in special_id:
            ids.append(special_id[piece])
            continue
        if piece not in _PIECE_CACHE:
            _PIECE_CACHE[piece] = _encode_by_rank(vocab, merges, [piece], {})
        ids += _PIECE_CACHE[piece]
    return ids


def bpe_encode_splitting_special_tokens_in_the_given_order(vocab, merges, text, special_tokens=()):
    pieces = _pretokenize_with(GPT2_SPLIT_PATTERN, text, special_tokens, order=list)
    return _encode_by_rank(vocab, merges, pieces, _special_ids(vocab, merges, special_tokens))


def bpe_decode_skipping_id_zero_as_padding(vocab, ids):
    return b"".join(vocab[i] for i in ids if i).decode("utf-8", errors="replace")


_TABLES = {}


def bpe_decode_with_a_table_cached_by_vocab_size(vocab, ids):
    table = _TABLES.setdefault(len(vocab), list(vocab))
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def encode_chunk_treating_complete_special_tokens_as_final(vocab, merges, buffer, chunk, special_tokens=()):
    if chunk is None:
        return T.bpe_encode(vocab, merges, buffer, special_tokens), ""
    text = buffer + chunk
    pieces = T.pretokenize(text, special_tokens)
    if pieces and pieces[-1] in special_tokens:
        return T.bpe_encode(vocab, merges, text, special_tokens), ""
    tail = pieces[-1] if pieces else ""
    held = max((n for t in special_tokens for n in range(1, len(t)) if tail.endswith(t[:n])), default=0)
    rest = text[len(text) - held:] if held else ""
    ready = text[:len(text) - held]
    ready_pieces = T.pretokenize(ready, special_tokens)
    if ready_pieces and ready_pieces[-1] not in special_tokens:
        rest = ready_pieces.pop() + rest
    return T.bpe_encode(vocab, merges, "".join(ready_pieces), special_tokens), rest


def encode_chunk_returning_a_list(vocab, merges, buffer, chunk, special_tokens=()):
    from solutions.tokenization import encode_chunk

    return list(encode_chunk(vocab, merges, buffer, chunk, special_tokens))


def tokenizer_json_special_tokens_only_as_added_tokens(vocab, merges, special_tokens=()):
    def edit(tok):  # what the reference wrote before issue 16: ids only in "added_tokens"
        n = 256 + len(merges)
        tok["model"]["vocab"] = {k: i for k, i in tok["model"]["vocab"].items() if i < n}
    return _edit_reference(vocab, merges, special_tokens, edit)


def tokenizer_json_special_tokens_numbered_in_list_order(vocab, merges, special_tokens=()):
    def edit(tok):
        n = 256 + len(merges)
        tok["model"]["vocab"] = {k: i for k, i in tok["model"]["vocab"].items() if i < n}
        for k, added in enumerate(tok["added_tokens"]):
            added["id"] = n + k
    return _edit_reference(vocab, merges, special_tokens, edit)


def tokenizer_json_special_tokens_not_marked_special(vocab, merges, special_tokens=()):
    def edit(tok):
        for added in tok["added_tokens"]:
            added["special"] = False
    return _edit_reference(vocab, merges, special_tokens, edit)


def encode_chunk_holding_the_longest_special_prefix_even_inside_a_match(vocab, merges, buffer, chunk,
                                                                       special_tokens=()):
    """What the reference did before issue 16: in "<s><s>" it held the second "<s>" back and sent the
    first out as a special token of its own."""
    if chunk is None:
        return T.bpe_encode(vocab, merges, buffer, special_tokens), ""
    text = buffer + chunk
    held = max((n for t in special_tokens for n in range(1, min(len(t), len(text) + 1)) if text.endswith(t[:n])),
               default=0)
    ready, rest = text[:len(text) - held], text[len(text) - held:]
    pieces = T.pretokenize(ready, special_tokens)
    if pieces and pieces[-1] not in special_tokens:
        rest = pieces.pop() + rest
    return T.bpe_encode(vocab, merges, "".join(pieces), special_tokens), rest


MUTANTS = {
    "word_tokenize": [word_tokenize_on_whitespace, word_tokenize_dropping_punctuation,
                      word_tokenize_grouping_punctuation, word_tokenize_ascii_only,
                      word_tokenize_with_the_regex_modules_word_class, word_tokenize_returning_a_tuple],
    "pretokenize": [pretokenize_without_leading_spaces, pretokenize_stripping_spaces,
                    pretokenize_ignoring_special_tokens, pretokenize_special_tokens_in_given_order,
                    pretokenize_unescaped_special_tokens, pretokenize_ascii_pattern,
                    pretokenize_sorting_the_callers_special_tokens, pretokenize_splitting_by_each_special_token_in_turn,
                    pretokenize_returning_a_tuple],
    "train_bpe": [train_bpe_ties_by_dict_order, train_bpe_ties_to_smallest_pair, train_bpe_across_pre_tokens,
                  train_bpe_on_special_token_text, train_bpe_counting_pairs_once_per_word,
                  train_bpe_special_tokens_first, train_bpe_on_joined_documents,
                  train_bpe_ties_by_concatenated_bytes, train_bpe_deduplicating_special_tokens_with_a_set,
                  train_bpe_keeping_duplicate_special_tokens, train_bpe_returning_merges_as_lists],
    "bpe_encode": [bpe_encode_left_to_right, bpe_encode_across_pre_tokens, bpe_encode_ignoring_special_tokens,
                   bpe_encode_longest_match, bpe_encode_special_ids_from_their_place_in_the_list,
                   bpe_encode_special_ids_by_first_match_in_vocab, bpe_encode_caching_pieces_across_tokenizers,
                   bpe_encode_splitting_special_tokens_in_the_given_order],
    "bpe_decode": [bpe_decode_token_by_token, bpe_decode_strict, bpe_decode_ignoring_errors, bpe_decode_latin1,
                   bpe_decode_skipping_id_zero_as_padding, bpe_decode_with_a_table_cached_by_vocab_size],
    "encode_chunk": [encode_chunk_independently, encode_chunk_holding_everything,
                     encode_chunk_ignoring_unfinished_special_tokens, encode_chunk_cutting_at_the_last_space,
                     encode_chunk_dropping_the_buffer_at_the_end, encode_chunk_treating_complete_special_tokens_as_final,
                     encode_chunk_returning_a_list, encode_chunk_holding_the_longest_special_prefix_even_inside_a_match],
    "to_tokenizer_json": [tokenizer_json_without_byte_level_alphabet, tokenizer_json_without_byte_level_pre_tokenizer,
                          tokenizer_json_merges_sorted, tokenizer_json_special_tokens_in_vocab_only,
                          tokenizer_json_without_split_pre_tokenizer, tokenizer_json_special_tokens_only_as_added_tokens,
                          tokenizer_json_special_tokens_numbered_in_list_order,
                          tokenizer_json_special_tokens_not_marked_special],
}
