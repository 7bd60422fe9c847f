"""Chapter 6: instruction data and prompts.

A pretrained model continues text. To make it follow instructions, it is fine-tuned on examples of
instructions and good answers (Chapter 7), and before that the examples have to be written down,
cleaned, split and rendered into tokens. This chapter builds those steps, and the prompts that get
answers out of a model that was never fine-tuned:

- **record formats** (6.1, 6.2): Alpaca records (``instruction``, ``input``, ``output``; Taori et al.,
  2023) and chat conversations (a list of ``{"role", "content"}`` messages with ``system``, ``user``
  and ``assistant`` roles), converted both ways, rejecting malformed records with an error that names
  the record and the field;
- **the chat template** (6.3): a conversation rendered with :data:`CHAT_TEMPLATE`, the course's
  ChatML template, into token ids and the *assistant mask*, the tokens a completion-only loss trains on;
- **cleaning** (6.4-6.8): exact deduplication by normalised text, near-duplicate removal with MinHash
  signatures and locality-sensitive hashing (Broder, 1997; Leskovec et al., 2020, ch. 3; Lee et al.,
  2022), and decontamination of training data against evaluation data by n-gram overlap (Brown et
  al., 2020);
- **splitting** (6.9): a seeded train/validation/test split by *group* (the source item of several
  rows), so that paraphrases of one item never straddle the split;
- **prompts** (6.10-6.13): typed templates with named slots, few-shot example selection within a
  token budget (random with a seed, or nearest by a given similarity; Liu et al., 2022), zero-shot,
  few-shot (Brown et al., 2020) and chain-of-thought prompts (Wei et al., 2022; Kojima et al., 2022),
  and instructions generated from records so that each answer can be checked.

Conventions used by every exercise of this chapter:

- **Messages.** A conversation is a ``list`` of ``dict`` with exactly the keys ``"role"`` (one of
  :data:`ROLES`) and ``"content"`` (a ``str``). A ``system`` message, if any, comes first.
- **Errors.** A malformed record raises ``ValueError`` whose message names the record
  (``"record 3"``, its index) and the field (``"'output'"``). Bad arguments raise ``TypeError`` or
  ``ValueError`` naming the argument.
- **Normalised text.** Deduplication and decontamination compare :func:`normalize_text` forms (NFKC,
  case-folded, whitespace runs collapsed) and word n-grams of it (:func:`word_shingles`); the data
  itself is never changed (the seed's ``.lower()`` on the labels destroys answers that need capitals).
- **Seeds.** Every random choice takes an integer ``seed``: the same call gives the same answer on
  every machine and across the grading door. Nothing uses Python's salted ``hash()``.
- **Inputs are never modified.** Every function returns new lists and dicts.

**The chat tokens.** The template's markers ``<|im_start|>`` and ``<|im_end|>`` (ChatML) are special
tokens of the course tokenizer since Chapter 1 (:data:`course_lib.tokenization.COURSE_SPECIAL_TOKENS`
reserved them), so they already have one id each (4094 and 4095) and the pretrained course model of
Chapter 5 has embedding rows for them. Those rows were never trained (the corpus contains no chat):
Chapter 7's fine-tuning trains them, and no tokenizer had to be retrained or embedding matrix
resized. A tokenizer that lacks them (a model from the Hugging Face hub) gets them as added special
tokens from :func:`chat_tokenizer`, and its model then needs ``model.resize_token_embeddings``.

The course instruction data set (:mod:`course_lib.instruction_data`) is built without these
exercises, so that it is the same whatever state they are in.
"""

from __future__ import annotations

import math
import string
from typing import Sequence

import torch

from course_lib.checks import check_int
from course_lib.exercises import exercise
from course_lib.instruction_data import normalize_text, word_shingles  # noqa: F401  (the exercises use them)

ROLES = ("system", "user", "assistant")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ALPACA_FIELDS = ("instruction", "input", "output", "system")  # "input" and "system" are optional

# The course's chat template (ChatML, as Qwen's and many other chat models use), in the Jinja that
# ``transformers`` tokenizers run (``apply_chat_template``). Every message becomes
#     <|im_start|>{role}\n{content}<|im_end|>\n
# and ``add_generation_prompt`` appends ``<|im_start|>assistant\n``, the start of the reply the model
# is to write. ``{% generation %}`` marks what an assistant writes, its content and its <|im_end|>
# (the token that ends its turn, which it must learn to produce): the tokens of
# ``return_assistant_tokens_mask`` and of TRL's ``assistant_only_loss``. The newline after
# <|im_end|> is formatting and is not trained. (transformers' Jinja environment drops the first newline
# after a block tag, so this readable layout renders without stray newlines.)
CHAT_TEMPLATE = """\
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}
{{- message['content'] + '<|im_end|>' -}}
{%- endgeneration -%}
{%- else -%}
{{- message['content'] + '<|im_end|>' -}}
{%- endif -%}
{{- '\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

TEMPLATE_TYPES = ("str", "int", "float")


# -- argument checks (run before your code; they are not part of the exercises) -------------------
def _check_list(name: str, value) -> None:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {type(value).__name__}")


def _check_str_list(name: str, value) -> None:
    _check_list(name, value)
    for i, item in enumerate(value):
        if type(item) is not str:
            raise TypeError(f"{name}[{i}] must be a str, got {type(item).__name__}")


def _check_fraction(name: str, value, allow_zero: bool = False) -> None:
    if type(value) not in (int, float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not ((0 <= value if allow_zero else 0 < value) and value < 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value}")


def _check_messages(name: str, messages) -> None:
    """The shape of a conversation (a list of {"role", "content"} dicts with known roles); what the
    roles' order must be is the business of the code that reads it."""
    _check_list(name, messages)
    if not messages:
        raise ValueError(f"{name} is empty")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"{name}[{i}] must be a dict with the keys 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(f"{name}[{i}]['role'] must be one of {ROLES}, got {message['role']!r}")
        if type(message["content"]) is not str:
            raise ValueError(f"{name}[{i}]['content'] must be a str, got {type(message['content']).__name__}")


def _validate_alpaca_to_messages(records, system=None) -> None:
    _check_list("records", records)
    if system is not None and type(system) is not str:
        raise TypeError(f"system must be a str or None, got {type(system).__name__}")


def _validate_messages_to_alpaca(conversations) -> None:
    _check_list("conversations", conversations)


def _validate_render_chat(tokenizer_json, messages, add_generation_prompt=False) -> None:
    if type(tokenizer_json) is not str or not tokenizer_json.lstrip().startswith("{"):
        raise TypeError("tokenizer_json must be the JSON text of a tokenizer (tokenizer.backend_tokenizer.to_str())")
    _check_messages("messages", messages)
    if type(add_generation_prompt) is not bool:
        raise TypeError(f"add_generation_prompt must be a bool, got {type(add_generation_prompt).__name__}")


def _validate_exact_dedup(texts) -> None:
    _check_str_list("texts", texts)


def _validate_minhash_signatures(texts, num_perm=128, seed=1, ngram=3) -> None:
    _check_str_list("texts", texts)
    check_int("num_perm", num_perm, 1)
    check_int("seed", seed, 0)
    check_int("ngram", ngram, 1)


def _validate_lsh_candidate_pairs(signatures, bands, rows) -> None:
    if not isinstance(signatures, torch.Tensor) or signatures.ndim != 2:
        raise TypeError("signatures must be a 2-D tensor (n_texts, num_perm)")
    if signatures.dtype != torch.int64:
        raise TypeError(f"signatures must be int64, got {signatures.dtype}")
    check_int("bands", bands, 1)
    check_int("rows", rows, 1)
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} is more than the {signatures.shape[1]} values of a signature")


def _validate_near_dedup(texts, threshold=0.8, num_perm=128, bands=32, rows=4, seed=1, ngram=3) -> None:
    _validate_minhash_signatures(texts, num_perm, seed, ngram)
    if type(threshold) not in (int, float) or isinstance(threshold, bool) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    check_int("bands", bands, 1)
    check_int("rows", rows, 1)
    if bands * rows > num_perm:
        raise ValueError(f"bands * rows = {bands * rows} is more than num_perm = {num_perm}")


def _validate_find_contaminated(train_texts, eval_texts, n=13) -> None:
    _check_str_list("train_texts", train_texts)
    _check_str_list("eval_texts", eval_texts)
    check_int("n", n, 1)


def _validate_grouped_split(groups, test_size, validation_size=0.0, seed=0) -> None:
    _check_list("groups", groups)
    for i, group in enumerate(groups):
        if type(group) not in (str, int):
            raise TypeError(f"groups[{i}] must be a str or an int, got {type(group).__name__}")
    _check_fraction("test_size", test_size)
    _check_fraction("validation_size", validation_size, allow_zero=True)
    if test_size + validation_size >= 1:
        raise ValueError(f"test_size + validation_size must be below 1, got {test_size + validation_size}")
    check_int("seed", seed, 0)


def _validate_fill_template(template, values, types=None) -> None:
    if type(template) is not str:
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if not isinstance(values, dict) or not all(type(k) is str for k in values):
        raise TypeError("values must be a dict with str keys (slot name -> value)")
    if types is not None:
        if not isinstance(types, dict):
            raise TypeError(f"types must be a dict (slot name -> type name) or None, got {type(types).__name__}")
        for slot, kind in types.items():
            if kind not in TEMPLATE_TYPES:
                raise ValueError(f"types[{slot!r}] must be one of {TEMPLATE_TYPES}, got {kind!r}")


def _validate_select_shots(lengths, budget, k, seed=None, scores=None) -> None:
    _check_list("lengths", lengths)
    for i, n in enumerate(lengths):
        if type(n) is not int or n < 0:
            raise ValueError(f"lengths[{i}] must be a non-negative int, got {n!r}")
    check_int("budget", budget, 0)
    check_int("k", k, 0)
    if (seed is None) == (scores is None):
        raise ValueError("give exactly one of seed (random shots) and scores (the most similar shots)")
    if seed is not None:
        check_int("seed", seed, 0)
    if scores is not None:
        if not isinstance(scores, torch.Tensor) or scores.ndim != 1 or not scores.is_floating_point():
            raise TypeError("scores must be a 1-D floating tensor, one similarity per candidate")
        if scores.shape[0] != len(lengths):
            raise ValueError(f"scores has {scores.shape[0]} entries for {len(lengths)} candidates (lengths)")


def _validate_few_shot_prompt(question, shots=(), chain_of_thought=False) -> None:
    if type(question) is not str:
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    _check_list("shots", shots)
    if type(chain_of_thought) is not bool:
        raise TypeError(f"chain_of_thought must be a bool, got {type(chain_of_thought).__name__}")


def _validate_sample_instructions(records, templates, n, seed) -> None:
    _check_list("records", records)
    _check_list("templates", templates)
    if not records or not templates:
        raise ValueError("records and templates must not be empty")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"records[{i}] must be a dict, got {type(record).__name__}")
    for i, template in enumerate(templates):
        if not isinstance(template, dict) or set(template) != {"instruction", "output"}:
            raise ValueError(f"templates[{i}] must be a dict with the keys 'instruction' and 'output'")
    check_int("n", n, 0)
    check_int("seed", seed, 0)


# -- exercises: record formats --------------------------------------------------------------------
@exercise("6.1", points=2, validate=_validate_alpaca_to_messages)
def alpaca_to_messages(records: list[dict], system: str | None = None) -> list[list[dict]]:
    """Convert Alpaca records to chat conversations, one conversation per record.

    An Alpaca record (Taori et al., 2023) is a dict with the fields ``"instruction"`` (what to do),
    ``"output"`` (the answer), an optional ``"input"`` (the data the instruction is about, e.g. the
    numbers to sort; may be ``""``) and an optional ``"system"`` (a system prompt for this record).

    Args:
        records: the Alpaca records (not modified).
        system: a system prompt for every record that has no (or an empty) ``"system"`` field of its
            own; ``None`` for none.

    Returns:
        One conversation per record, in order: ``[system message (if any), user message, assistant
        message]``, each message ``{"role": ..., "content": ...}``. The user's content is the
        instruction when the input is missing or blank (only whitespace), else the instruction, a
        blank line and the input: ``f"{instruction}\\n\\n{input}"``. The assistant's content is the
        output. The system content is the record's own ``"system"`` if it is a non-empty string,
        else ``system`` if that is not ``None``; with neither there is no system message. Texts are
        copied as they are (no stripping, no lower-casing).

    Raises:
        ValueError: naming the record (``"record 2"``) and the field, if a record is not a dict, has a
            field other than those four (a typo like ``"ouput"``), lacks ``"instruction"`` or
            ``"output"``, has a field that is not a ``str``, or has an instruction or output that is
            empty or blank.

    Hint:
        Check every record before building anything from it, and put ``i`` in every message.
    """
    raise NotImplementedError("Exercise 6.1: implement alpaca_to_messages in instruct.py")


@exercise("6.2", points=2, validate=_validate_messages_to_alpaca)
def messages_to_alpaca(conversations: list[list[dict]]) -> list[dict]:
    """Convert single-turn chat conversations to Alpaca records, checking each conversation.

    Args:
        conversations: conversations as :func:`alpaca_to_messages` returns them (not modified).

    Returns:
        One Alpaca record per conversation, in order: ``{"instruction": user content, "input": "",
        "output": assistant content}``, plus ``"system": system content`` when the conversation
        starts with a system message. The chat format has no separate input field, so the whole user
        turn becomes the instruction (converting back and forth keeps the conversation, not the
        record's split into instruction and input).

    Raises:
        ValueError: naming the record (``"record 2"``) and, where one is at fault, the message and
            field (``"messages[1]['role']"``), unless the conversation is a list of messages of the
            form ``[system (optional), user, assistant]``: each message a dict with exactly the keys
            ``"role"`` and ``"content"``, a known role (:data:`ROLES`), ``str`` content, non-empty
            (not blank) user and assistant contents, and exactly one user turn followed by exactly
            one assistant turn (a multi-turn conversation does not fit one Alpaca record, and a
            conversation that ends with the user has no output).

    Hint:
        Take off an optional leading system message first; then exactly two messages must remain.
    """
    raise NotImplementedError("Exercise 6.2: implement messages_to_alpaca in instruct.py")


# -- exercises: the chat template -----------------------------------------------------------------
@exercise("6.3", points=4, validate=_validate_render_chat)
def render_chat(tokenizer_json: str, messages: list[dict], add_generation_prompt: bool = False) -> dict:
    """Render a conversation with the course's chat template and tokenize it, with the assistant mask.

    The same result as ``tokenizer.apply_chat_template(messages, add_generation_prompt=...,
    return_dict=True, return_assistant_tokens_mask=True)`` on a ``transformers`` tokenizer whose
    ``chat_template`` is :data:`CHAT_TEMPLATE`, written without Jinja.

    Args:
        tokenizer_json: the tokenizer as its ``tokenizer.json`` text (what
            ``tokenizer.backend_tokenizer.to_str()`` returns); it must have the special tokens
            ``<|im_start|>`` and ``<|im_end|>``.
        messages: a conversation (module docstring), any number of turns.
        add_generation_prompt: append the start of an assistant turn for the model to complete.

    Returns:
        ``{"text": str, "input_ids": list[int], "assistant_masks": list[int]}``:

        - ``text``: every message rendered as ``"<|im_start|>" + role + "\\n" + content + "<|im_end|>"
          + "\\n"``, in order, then ``"<|im_start|>assistant\\n"`` if ``add_generation_prompt``;
        - ``input_ids``: the ids of the whole ``text`` encoded at once by the tokenizer, special tokens
          recognised and nothing added around them;
        - ``assistant_masks``: one 0/1 per id: 1 for the tokens whose characters overlap the part of an
          assistant message that the assistant writes, its content and its ``<|im_end|>`` (not the
          ``"<|im_start|>assistant\\n"`` header, not the newline after ``<|im_end|>``, not the
          generation prompt); 0 for everything else. In a multi-turn conversation every assistant
          turn counts, and only those.

    Hint:
        ``tokenizers.Tokenizer.from_str(tokenizer_json).encode(text, add_special_tokens=False)`` gives
        the ids and ``offsets``, the ``(start, end)`` character span of each token in ``text``.
        Record the character span of each assistant part while you build the text.
    """
    raise NotImplementedError("Exercise 6.3: implement render_chat in instruct.py")


# -- exercises: deduplication and decontamination ---------------------------------------------------
@exercise("6.4", points=1, validate=_validate_exact_dedup)
def exact_dedup(texts: list[str]) -> list[int]:
    """Exact deduplication: the indices of the texts to keep.

    Two texts are duplicates when their :func:`normalize_text` forms are equal (so ``"Sort these."``,
    ``"sort  these."`` and ``"SORT THESE."`` are one text). Compare them through a hash of the
    normalised UTF-8 bytes (``hashlib.sha256``), as a pipeline over millions of texts would keep
    hashes, not texts.

    Args:
        texts: the texts, in order (not modified).

    Returns:
        The indices of the first occurrence of each distinct normalised text, in increasing order
        (``exact_dedup(["a", "b", "A", "a "])`` is ``[0, 1]``); ``[]`` for no texts.

    Hint:
        One pass with a ``set`` of the digests seen so far.
    """
    raise NotImplementedError("Exercise 6.4: implement exact_dedup in instruct.py")


@exercise("6.5", points=3, validate=_validate_minhash_signatures)
def minhash_signatures(texts: list[str], num_perm: int = 128, seed: int = 1, ngram: int = 3) -> torch.Tensor:
    """MinHash signatures of texts (Broder, 1997), exactly as ``datasketch.MinHash`` computes them.

    A text is the set of its word shingles, ``word_shingles(text, ngram)``. For two sets ``A`` and
    ``B`` and a random hash function ``h``, ``P(min h(A) == min h(B)) = |A & B| / |A | B|``, their
    Jaccard similarity; with ``num_perm`` independent hash functions, the fraction of equal minima
    estimates it with standard deviation ``sqrt(J (1 - J) / num_perm)``.

    The hash functions are datasketch's (its default ``"affine32"`` scheme), all in unsigned 32-bit
    arithmetic, i.e. modulo ``2**32``:

    1. each shingle's base hash is :func:`shingle_hash` of it (the first 4 bytes of its SHA-1,
       little-endian, then MurmurHash3's finaliser);
    2. hash function ``i`` maps a base hash ``x`` to ``(a[i] * x + b[i]) mod 2**32``, with
       ``a, b = minhash_permutations(num_perm, seed)``;
    3. signature entry ``i`` is the minimum of hash function ``i`` over the text's shingles, or
       ``2**32 - 1`` for a text without shingles (empty or blank).

    Args:
        texts: the texts (not modified).
        num_perm: the number of hash functions (the signature length).
        seed: the seed of the hash functions (datasketch's ``seed``).
        ngram: words per shingle.

    Returns:
        ``(len(texts), num_perm)`` int64 tensor; row ``t`` equals
        ``datasketch.MinHash(num_perm, seed=seed)`` updated with ``texts[t]``'s shingles (UTF-8).

    Hint:
        With numpy, ``uint32`` arrays wrap around on overflow, which is the arithmetic modulo
        ``2**32`` asked for: ``(a * x[:, None] + b).min(axis=0)`` for the base hashes ``x`` of one
        text as a column. Convert to int64 before making the tensor.
    """
    raise NotImplementedError("Exercise 6.5: implement minhash_signatures in instruct.py")


@exercise("6.6", points=2, validate=_validate_lsh_candidate_pairs)
def lsh_candidate_pairs(signatures: torch.Tensor, bands: int, rows: int) -> list[tuple[int, int]]:
    """The candidate pairs of locality-sensitive hashing by banding (Leskovec et al., 2020, 3.4).

    Each signature is cut into ``bands`` bands of ``rows`` consecutive values: band ``j`` is columns
    ``j * rows`` to ``(j + 1) * rows - 1`` (columns from ``bands * rows`` on are unused). Two texts
    are a *candidate pair* when all ``rows`` values of at least one band are equal. For two texts of
    Jaccard similarity ``s`` this happens with probability ``1 - (1 - s**rows)**bands``: an S-shaped
    curve that is steep around ``(1 / bands) ** (1 / rows)``. Comparing only within bands (bucketing
    each band's values) is what makes it fast: no pair of signatures is compared in full.

    Args:
        signatures: ``(n_texts, num_perm)`` int64, as :func:`minhash_signatures` returns them.
        bands, rows: the banding; ``bands * rows <= num_perm``.

    Returns:
        Every candidate pair once, as ``(i, j)`` with ``i < j``, sorted; the same pairs as
        ``datasketch.MinHashLSH(num_perm=num_perm, params=(bands, rows))`` finds.

    Hint:
        For each band, a ``dict`` from the band's values (a tuple) to the texts that have them: every
        two texts in one bucket are a pair. A pair found in several bands is still one pair.
    """
    raise NotImplementedError("Exercise 6.6: implement lsh_candidate_pairs in instruct.py")


@exercise("6.7", points=3, validate=_validate_near_dedup)
def near_dedup(texts: list[str], threshold: float = 0.8, num_perm: int = 128, bands: int = 32, rows: int = 4,
               seed: int = 1, ngram: int = 3) -> dict:
    """Near-duplicate removal with MinHash and LSH: keep each text unless it is a near duplicate of an
    earlier text that was kept.

    The texts' signatures come from :func:`minhash_signatures` (``num_perm``, ``seed``, ``ngram``)
    and their candidate pairs from :func:`lsh_candidate_pairs` (``bands``, ``rows``). The estimated
    Jaccard similarity of a pair is the fraction of the ``num_perm`` signature values that are equal.
    Go through the texts in order: text ``i`` is removed if some kept text ``j < i`` forms a candidate
    pair with it whose estimated similarity is at least ``threshold``; otherwise it is kept. (This is
    what a streaming pipeline does: query an LSH index of the kept texts, insert the text if nothing
    close enough is found.)

    Args:
        texts: the texts, in order (not modified).
        threshold: the estimated Jaccard similarity from which a text counts as a duplicate.
        num_perm, seed, ngram: as for :func:`minhash_signatures`.
        bands, rows: as for :func:`lsh_candidate_pairs`.

    Returns:
        ``{"keep": [...], "duplicates": [...]}``: ``keep`` the indices of the kept texts, increasing;
        ``duplicates`` one ``(i, j, estimate)`` per removed text ``i``, increasing in ``i``, where ``j``
        is the smallest kept index that removed it and ``estimate`` (a ``float``) their estimated
        similarity.

    Hint:
        A pair below the threshold stays a candidate only: LSH finds candidates cheaply, the estimate
        decides.
    """
    raise NotImplementedError("Exercise 6.7: implement near_dedup in instruct.py")


@exercise("6.8", points=3, validate=_validate_find_contaminated)
def find_contaminated(train_texts: list[str], eval_texts: list[str], n: int = 13) -> list[int]:
    """Decontamination by n-gram overlap (Brown et al., 2020): the training texts that contain text
    of an evaluation example.

    Texts are compared as words of :func:`normalize_text` (split on single spaces). A training text is
    *contaminated* when it contains, as consecutive words, some ``n``-word sequence of an evaluation
    text; an evaluation text of fewer than ``n`` words (but at least one) counts as a whole: a
    training text that contains all its words, consecutively and in order, is contaminated. Words are
    compared whole: ``"37 + 4"`` does not occur in ``"37 + 45"``.

    Args:
        train_texts: the training texts (not modified).
        eval_texts: the evaluation texts.
        n: the n-gram length (GPT-3 used 13 words).

    Returns:
        The indices of the contaminated training texts, increasing.

    Hint:
        Put every ``n``-gram of the evaluation texts (as tuples of words) in a set, and the short
        evaluation texts in another (by length); then slide over each training text's words.
    """
    raise NotImplementedError("Exercise 6.8: implement find_contaminated in instruct.py")


# -- exercises: splitting -------------------------------------------------------------------------
@exercise("6.9", points=2, validate=_validate_grouped_split)
def grouped_split(groups: list[str | int], test_size: float, validation_size: float = 0.0,
                  seed: int = 0) -> dict[str, list[int]]:
    """A seeded train/validation/test split of rows by *group*: all rows of a group land together.

    ``groups[r]`` is the group of row ``r``: the source document or item that the row was made from
    (paraphrases, reorderings and templates filled with one item share a group). Splitting rows
    instead of groups puts paraphrases of one item on both sides, and the test set then measures
    memory, not skill.

    The groups are numbered in order of first appearance (``0 .. G-1``). With ``permutation =
    numpy.random.default_rng(seed).permutation(G)``, ``n_test = math.ceil(test_size * G)`` and
    ``n_validation = math.ceil(validation_size * G)``: the test groups are ``permutation[:n_test]``,
    the validation groups the next ``n_validation`` and the train groups the rest. With every row its
    own group and ``validation_size=0`` this is ``datasets.Dataset.train_test_split(test_size=test_size,
    seed=seed)`` (and Chapter 5's ``split_documents``).

    Args:
        groups: one group (``str`` or ``int``) per row (not modified).
        test_size: the share of *groups* held out for testing, in ``(0, 1)``.
        validation_size: the share of groups for validation, in ``[0, 1)``; ``0`` for no validation.
        seed: the seed of the permutation.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``: the row indices of each part,
        increasing; together every row exactly once.

    Raises:
        ValueError: if the train part would get no group.

    Hint:
        ``dict.fromkeys(groups)`` keeps the groups in order of first appearance.
    """
    raise NotImplementedError("Exercise 6.9: implement grouped_split in instruct.py")


# -- exercises: prompts -----------------------------------------------------------------------------
@exercise("6.10", points=2, validate=_validate_fill_template)
def fill_template(template: str, values: dict, types: dict | None = None) -> str:
    """Fill a prompt template's named slots, refusing anything that does not fit.

    The seed outline fills templates with ``str.replace`` in a loop: a slot without a value silently
    stays in the prompt (``"What is the {location} of the event?"``), a value without a slot is
    silently dropped, and nothing checks what kind of value goes where. Here every one of those fails.

    Template syntax (Python's ``str.format``, restricted): a slot is ``{name}`` with ``name`` a Python
    identifier; ``{{`` and ``}}`` stand for literal braces; no format specs (``{x:>3}``), conversions
    (``{x!r}``), attribute or index access (``{x.y}``, ``{x[0]}``) or positional slots (``{}``,
    ``{0}``). A slot may occur several times.

    Args:
        template: the template text.
        values: slot name -> value (not modified).
        types: optional slot name -> ``"str"``, ``"int"`` or ``"float"``: the type each listed slot's
            value must have (an ``int`` is accepted for ``"float"``; a ``bool`` is never an ``int`` or
            ``float``). Slots not listed take any value.

    Returns:
        The filled text, ``template.format(**values)`` (each value written with ``str()``).

    Raises:
        ValueError: naming the slot, for a malformed template (unbalanced or unsupported braces), a
            slot without a value, a value (or a ``types`` entry) without a slot.
        TypeError: naming the slot, for a value of the wrong type.

    Hint:
        ``string.Formatter().parse(template)`` yields ``(literal_text, field_name, format_spec,
        conversion)`` tuples and raises ``ValueError`` on unbalanced braces.
    """
    raise NotImplementedError("Exercise 6.10: implement fill_template in instruct.py")


@exercise("6.11", points=3, validate=_validate_select_shots)
def select_shots(lengths: list[int], budget: int, k: int, seed: int | None = None,
                 scores: torch.Tensor | None = None) -> list[int]:
    """Choose at most ``k`` few-shot examples from a pool, within a token budget.

    Two ways to rank the candidates (give exactly one of ``seed`` and ``scores``):

    - **random** (``seed``): the order of ``torch.randperm(len(lengths),
      generator=torch.Generator().manual_seed(seed))``;
    - **nearest** (``scores``, one similarity to the query per candidate): most similar first, ties
      to the lower index (a stable descending sort).

    Then go through the candidates in that order and take each one whose length still fits the
    budget (the lengths taken so far plus its own at most ``budget``); skip one that does not fit and
    go on; stop once ``k`` are taken.

    Args:
        lengths: the token count of each candidate as it will appear in the prompt.
        budget: the tokens the shots may use together.
        k: the most shots to take.
        seed: the seed of the random ranking.
        scores: ``(n_candidates,)`` floating similarities for the nearest ranking.

    Returns:
        The indices of the chosen candidates in prompt order: for the random ranking, the order they
        were taken in; for the nearest ranking the reverse, so that the most similar shot comes last,
        right before the question (Liu et al., 2022). ``[]`` if nothing fits.

    Hint:
        ``torch.sort(scores, descending=True, stable=True)``.
    """
    raise NotImplementedError("Exercise 6.11: implement select_shots in instruct.py")


@exercise("6.12", points=2, validate=_validate_few_shot_prompt)
def few_shot_prompt(question: str, shots: Sequence[dict] = (), chain_of_thought: bool = False) -> str:
    """A zero-shot, few-shot or chain-of-thought prompt for a pretrained (not instruction-tuned) model.

    Every shot and the question become a block ``"Question: " + question + "\\n" + "Answer:" + ...``;
    blocks are separated by one blank line (``"\\n\\n"``). A shot's block ends with ``" " + answer``.
    The question's block ends right after ``"Answer:"``, with no space: the model writes the space as
    the start of its first word (a trailing space would split the answer's first token differently
    from every shot).

    With ``chain_of_thought`` (Wei et al., 2022; Kojima et al., 2022), each shot's answer part is
    ``" Let's think step by step. " + rationale + " So the answer is " + answer + "."`` and the
    question's block ends with ``"Answer: Let's think step by step."``, so that the model writes a
    rationale before its answer.

    Args:
        question: the question to answer.
        shots: dicts with ``"question"`` and ``"answer"`` (and ``"rationale"`` for chain of thought),
            in prompt order; ``()`` for a zero-shot prompt.
        chain_of_thought: whether to ask for reasoning first.

    Returns:
        The prompt text. Zero-shot: ``"Question: What is 2 plus 3?\\nAnswer:"``.

    Raises:
        ValueError: naming the shot (``"shots[1]"``) and the field, if a shot lacks ``"question"`` or
            ``"answer"`` (or ``"rationale"`` with ``chain_of_thought``) or one of them is not a ``str``.

    Hint:
        Build the list of blocks, then ``"\\n\\n".join`` it.
    """
    raise NotImplementedError("Exercise 6.12: implement few_shot_prompt in instruct.py")


@exercise("6.13", points=2, validate=_validate_sample_instructions)
def sample_instructions(records: list[dict], templates: list[dict], n: int, seed: int) -> list[dict]:
    """Instructions with checkable answers, generated from records: ``n`` distinct (record, template)
    pairs drawn with a seed, every slot of a pair filled from the *same* record.

    The seed outline draws each slot's value independently (``random.choice`` per entity), which
    pairs a city with an unrelated event ("What is the New York of the conference?"), and nothing
    ties the question to an answer. Drawing a whole record and filling both the instruction and its
    answer from it makes every example coherent and its answer known.

    Args:
        records: dicts of facts (``{"name": "urlsplit", "module": "urllib.parse"}``); not modified.
        templates: dicts ``{"instruction": ..., "output": ...}``, both templates in the syntax of
            :func:`fill_template` (``"Which module defines {name}?"``, ``"{module}"``).
        n: how many examples, at most ``len(records) * len(templates)``.
        seed: the seed.

    Returns:
        ``n`` dicts ``{"instruction": str, "output": str, "record": r, "template": t}``. They come
        from ``rng = random.Random(seed)``: for each draw, ``r = rng.randrange(len(records))`` then
        ``t = rng.randrange(len(templates))``; a pair drawn before is skipped (and drawing goes on)
        until ``n`` distinct pairs are found. Both texts are ``templates[t]``'s filled with the values
        of their slots from ``records[r]`` (fields the template does not use are left out).

    Raises:
        ValueError: if ``n`` is larger than the number of pairs; naming the record, the template and
            the slot, if a drawn template needs a field its record does not have.

    Hint:
        ``string.Formatter().parse`` lists a template's slots; :func:`fill_template` fills them.
    """
    raise NotImplementedError("Exercise 6.13: implement sample_instructions in instruct.py")


# -- implemented: what the exercises are used for ---------------------------------------------------
_MAX_HASH32 = (1 << 32) - 1


def shingle_hash(shingle: str) -> int:
    """The 32-bit base hash of a shingle in datasketch's ``"affine32"`` scheme: the first 4 bytes of the
    SHA-1 of its UTF-8 bytes as a little-endian integer (``datasketch.hashfunc.sha1_hash32``), then
    MurmurHash3's 32-bit finaliser (a fixed bijection that mixes the bits)."""
    import hashlib

    x = int.from_bytes(hashlib.sha1(shingle.encode("utf-8")).digest()[:4], "little")
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _MAX_HASH32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _MAX_HASH32
    return x ^ (x >> 16)


def minhash_permutations(num_perm: int, seed: int):
    """``(a, b)``, two ``numpy.uint32`` arrays of ``num_perm`` entries: datasketch's ``"affine32"``
    hash functions ``x -> (a * x + b) mod 2**32`` for ``seed`` (``a`` odd, so each is a bijection)."""
    import numpy as np

    check_int("num_perm", num_perm, 1)
    check_int("seed", seed, 0)
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def lsh_probability(similarity: float | torch.Tensor, bands: int, rows: int):
    """Probability that a pair of Jaccard similarity ``s`` becomes an LSH candidate:
    ``1 - (1 - s**rows)**bands``."""
    return 1 - (1 - similarity ** rows) ** bands


def template_slots(template: str) -> list[str]:
    """The slot names of a template in the syntax of :func:`fill_template`, each once, in order
    (no checks: :func:`fill_template` says what is wrong with a malformed one)."""
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(template) if name))


class PromptTemplate:
    """A typed prompt template: ``PromptTemplate("What is {a} plus {b}?", a="int", b="int")``.

    ``fill(**values)`` fills it with :func:`fill_template` (so a missing, unknown or mistyped value
    fails, naming the slot); ``slots`` lists its slot names.
    """

    def __init__(self, text: str, **types: str):
        self.text, self.types = text, dict(types)
        unknown = set(self.types) - set(template_slots(text))
        if unknown:
            raise ValueError(f"types given for slots the template does not have: {sorted(unknown)}")

    @property
    def slots(self) -> list[str]:
        return template_slots(self.text)

    def fill(self, **values) -> str:
        return fill_template(self.text, values, self.types or None)

    def __repr__(self) -> str:
        return f"PromptTemplate({self.text!r}, {self.types})"


def chat_tokenizer(tokenizer=None):
    """A ``transformers`` tokenizer that renders chats with :data:`CHAT_TEMPLATE`.

    Args:
        tokenizer: a ``transformers`` tokenizer; default: the course tokenizer of Chapter 1
            (:func:`course_lib.pretraining.course_tokenizer`), which already has ``<|im_start|>`` and
            ``<|im_end|>``. One that lacks them gets them as added special tokens (its model then
            needs ``model.resize_token_embeddings(len(tokenizer))``).

    Returns:
        The tokenizer (changed in place) with ``chat_template`` set: ``apply_chat_template`` and
        TRL's trainers (``assistant_only_loss=True`` needs the ``{% generation %}`` marks) use it.
    """
    if tokenizer is None:
        from course_lib.pretraining import course_tokenizer

        tokenizer = course_tokenizer()
    missing = [t for t in (IM_START, IM_END) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def extract_answer(completion: str, chain_of_thought: bool = False) -> str:
    """The answer in a model's continuation of a :func:`few_shot_prompt`.

    Plain prompts: the continuation up to its first newline (a model that goes on writes the next
    ``"Question:"`` block on a new line), stripped. Chain of thought: what follows the last
    ``"So the answer is"`` up to the end of its line, stripped, without a final period; ``""`` if the
    model never says it.
    """
    if chain_of_thought:
        marker = "So the answer is"
        if marker not in completion:
            return ""
        completion = completion.rsplit(marker, 1)[1]
    answer = completion.strip(" ").split("\n", 1)[0].strip()
    return answer[:-1].rstrip() if chain_of_thought and answer.endswith(".") else answer


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 16
                    ) -> torch.Tensor:
    """Mean log-probability per token of each ``answers[i]`` after ``prompts[i]`` under ``model``.

    Each pair is tokenized as ``prompt + answer`` (with the space the answer starts with, as a prompt
    of :func:`few_shot_prompt` expects); the answer's tokens are those after the prompt's. Returns a
    ``(len(prompts),)`` float tensor of nats per answer token (closer to 0 is better; Chapter 10
    turns this into multiple-choice scoring).
    """
    from course_lib.tasks import pad_batch

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        full_ids = [tokenizer(p + a, add_special_tokens=False)["input_ids"]
                    for p, a in zip(prompts[start:start + batch_size], answers[start:start + batch_size])]
        ids, mask = pad_batch(full_ids, pad_id=tokenizer.pad_token_id or 0)   # (batch, seq), right padded
        logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for row, (p, f) in enumerate(zip(prompt_ids, full_ids)):
            targets = torch.tensor(f[len(p):], device=device)                  # the answer's tokens
            picked = logprobs[row, len(p) - 1:len(f) - 1].gather(-1, targets[:, None])
            out.append(picked.mean().item())
    return torch.tensor(out)


def line_stop_ids(tokenizer) -> list[int]:
    """Where a one-line answer ends: the end-of-text token, then every token whose text holds a newline
    (ascending): the ``stop_ids`` of a generation that :func:`extract_answer` reads."""
    return [tokenizer.eos_token_id] + [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 12, batch_size: int = 16
                       ) -> list[str]:
    """Each prompt's greedy continuation (``generate`` with ``do_sample=False``), decoded, cut at the
    first newline (generation stops at a token that holds one). Prompts are batched with padding on
    the left, so that every row's next token comes right after its own prompt; the attention mask
    hides the padding."""
    from course_lib.tasks import pad_batch

    device = next(model.parameters()).device
    stops = line_stop_ids(tokenizer)
    texts = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_batch([tokenizer(p, add_special_tokens=False)["input_ids"]
                               for p in prompts[start:start + batch_size]], pad_id=tokenizer.pad_token_id, left=True)
        out = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)
        texts += [tokenizer.decode(row, skip_special_tokens=True).split("\n", 1)[0]
                  for row in out[:, ids.shape[1]:]]
    return texts


def plot_assistant_mask(tokens: Sequence[str], mask: Sequence[int], per_row: int = 12, ax=None):
    """Draw a rendered conversation token by token, shading the tokens with mask 1 (those the loss
    sees). ``tokens`` are the tokens' texts (newlines shown as ``\\n``)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if len(tokens) != len(mask):
        raise ValueError(f"{len(tokens)} tokens but {len(mask)} mask values")
    n_rows = math.ceil(len(tokens) / per_row)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.42 * n_rows + 0.6))
    for i, (token, m) in enumerate(zip(tokens, mask)):
        row, col = divmod(i, per_row)
        ax.add_patch(Rectangle((col, -row), 0.94, 0.8, facecolor="#f4a259" if m else "#e8e8e8",
                               edgecolor="#555555" if m else "#bbbbbb", linewidth=0.8))
        shown = token.replace("\n", "\\n").replace(" ", "\u2423")
        ax.text(col + 0.47, -row + 0.4, shown, ha="center", va="center",
                fontsize=7 if len(shown) > 9 else 8, family="monospace")
    ax.set_xlim(-0.1, per_row)
    ax.set_ylim(-n_rows + 0.7, 0.9)
    ax.set_axis_off()
    return ax
