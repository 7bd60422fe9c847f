"""Chapter 1 assignment (tokenization): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

The experiment trains the student's own ``train_bpe`` on a slice of the course corpus and uses the
student's other functions on its result; every call goes through ``attempt``, so an unfinished or
broken exercise is reported and the rest still runs.
"""

VOCAB_SIZE_POINTS = 3  # written answers, graded by hand
NUMBERS_POINTS = 2


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 1."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 1: tokenization with byte-level BPE",
            what="""
from splitting text into words, through training a byte-level BPE tokenizer, to encoding,
decoding, streaming and exporting it for Hugging Face `tokenizers`.
""",
            contract="""
and the module docstring the conventions all of them share: vocabulary layout, tie-break,
special tokens
""",
            written=(VOCAB_SIZE_POINTS, NUMBERS_POINTS),
            experiments="""
Run the experiments: they train *your* `train_bpe` on a slice of the course corpus and measure
what your tokenizer does. An exercise you have not done yet is reported, not fatal, so you can run
them at any stage. Then answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(f"""
import time

from course_lib.corpus import load_corpus

SPECIAL = ["<|endoftext|>"]
"""),
        kit.markdown("about_experiment_split", """
## Experiment 1: characters, words, pre-tokens

Three ways to cut the same sentence: one token per character, your `word_tokenize` (1.1), and your
GPT-2 `pretokenize` (1.2), which keeps the spaces and the special token. Count the pieces.
"""),
        kit.code("experiment_split", r"""
sample = "Don't panic: the   tokenizer's 12345 numbers, naïve café, 東京 and <|endoftext|> markers."
print(f"characters ({len(tokenization.char_tokenize(sample))} pieces)")
words = attempt("word_tokenize", tokenization.word_tokenize, sample)
if words is not None:
    print(f"word_tokenize ({len(words)} pieces): {words}")
pieces = attempt("pretokenize", tokenization.pretokenize, sample, SPECIAL)
if pieces is not None:
    print(f"pretokenize ({len(pieces)} pieces): {pieces}")
    print("joined back to the text:", "".join(pieces) == sample)
"""),
        kit.markdown("about_experiment_train", """
## Experiment 2: train your BPE on the course corpus

The cell trains your `train_bpe` (1.3) on the first 300,000 characters of the course corpus (the
Python documentation, `course_lib.corpus`) up to 1,024 ordinary tokens: 256 bytes and 768 merges,
plus the special token. It prints the first merges and the longest tokens learned. A reference
implementation takes about a second; one that recounts every pair after each merge takes much longer.
If yours is too slow, lower `TRAIN_CHARS` here while you work on it (grading runs this cell as it is
written here, with a generous time limit).
"""),
        kit.code("experiment_train", r"""
TRAIN_CHARS = 300_000
MAX_VOCAB = 1024  # ordinary tokens: 256 bytes + 768 merges (the special token comes on top)

train_docs, train_chars = [], 0
for doc in load_corpus("train"):
    if train_chars >= TRAIN_CHARS:
        break
    train_docs.append(doc)
    train_chars += len(doc)
heldout = "\n\n".join(load_corpus("validation"))[:50_000]  # text the tokenizer never saw


def train():
    started = time.perf_counter()
    vocab, merges = tokenization.train_bpe(train_docs, MAX_VOCAB + len(SPECIAL), SPECIAL)
    vocab, merges = list(vocab), list(merges)
    print(f"train_bpe: {len(merges)} merges on {train_chars:,} characters in {time.perf_counter() - started:.1f} s")
    print("first merges:", [(a + b).decode("utf-8", "replace") for a, b in merges[:16]])
    learned = [token.decode("utf-8", "replace") for token in vocab[256:256 + len(merges)]]
    print("longest tokens:", sorted(learned, key=len)[-6:])
    print("longest with letters:", sorted((t for t in learned if any(c.isalpha() for c in t)), key=len)[-8:])
    return vocab, merges


vocab, merges = attempt("train_bpe", train) or (None, None)
"""),
        kit.markdown("about_experiment_compression", """
## Experiment 3: compression against vocabulary size

BPE is greedy: training to a smaller vocabulary gives exactly the first merges of a larger one. So
the first `k` merges of the training above *are* the tokenizer of `256 + k` tokens, and one training
gives all the sizes. The cell encodes 50,000 characters of held-out text (the validation split) with
your `bpe_encode` (1.4) at each size and plots the **bytes per token** (UTF-8 bytes of the text
divided by the number of tokens: 1.0 for the bytes alone, higher is shorter sequences). The dashed
line is the bytes per word of your `word_tokenize`, whose vocabulary would need every distinct word.
"""),
        kit.code("experiment_compression", r"""
VOCAB_SIZES = [256, 288, 320, 384, 512, 640, 768, 896, 1024]
heldout_bytes = len(heldout.encode("utf-8"))


def bytes_per_token(n_merges):
    sub_vocab = vocab[:256 + n_merges] + [token.encode("utf-8") for token in SPECIAL]
    ids = tokenization.bpe_encode(sub_vocab, merges[:n_merges], heldout, SPECIAL)
    return heldout_bytes / len(ids)


sizes, ratios = [], []
if vocab is None:
    print("train your BPE first (experiment 2)")
else:
    for size in VOCAB_SIZES:
        n_merges = min(size - 256, len(merges))
        ratio = attempt("bpe_encode", bytes_per_token, n_merges)
        if ratio is None:
            break
        sizes.append(256 + n_merges)
        ratios.append(ratio)
        print(f"{256 + n_merges:>5} tokens: {ratio:.2f} bytes per token")

words = attempt("word_tokenize", tokenization.word_tokenize, heldout)
if words:
    distinct = attempt("word_tokenize", lambda: len({w for doc in train_docs for w in tokenization.word_tokenize(doc)}))
    print(f"word_tokenize: {heldout_bytes / len(words):.2f} bytes per word, "
          f"with {distinct} distinct words in the training slice alone")
if plt is not None and ratios:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(sizes, ratios, "o-", label="your BPE")
    if words:
        ax.axhline(heldout_bytes / len(words), linestyle="--", color="gray", label="your word_tokenize")
    ax.set_xlabel("vocabulary size (ordinary tokens)")
    ax.set_ylabel("bytes per token (held-out)")
    ax.legend()
    plt.show()
"""),
        kit.markdown("about_experiment_compare", """
## Experiment 4: does it round-trip, and what do the libraries say?

- Your `bpe_decode` (1.5) must give back the exact text from your ids, also where a token cuts a
  multi-byte character in two (then U+FFFD, `�`, stands for the broken piece).
- Your `encode_iterable` (built on 1.6) must give the same ids when the text arrives in small chunks.
- Your `to_tokenizer_json` (1.7) must make a Hugging Face `tokenizers.Tokenizer` that gives your ids.
- The `tokenizers` BPE trainer, on the same text with the same pre-tokenizer and vocabulary size,
  learns merges of its own: how many agree with yours, and how well does it compress? (Where two pairs
  are equally frequent it may pick the other one, so a few differences are expected.)
"""),
        kit.code("experiment_compare", r"""
import json

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers


def round_trip():
    ids = tokenization.bpe_encode(vocab, merges, heldout, SPECIAL)
    print(f"decode(encode(held-out text)) == text: {tokenization.bpe_decode(vocab, ids) == heldout}")
    for text in ["naïve café, 東京 🙂", "<|endoftext|>after<|endoftext|>", "  two spaces\n\n\ttab"]:
        back = tokenization.bpe_decode(vocab, tokenization.bpe_encode(vocab, merges, text, SPECIAL))
        print(f"  {text!r}: {'ok' if back == text else 'gives ' + repr(back)}")
    print("first byte of 'é' alone decodes to", repr(tokenization.bpe_decode(vocab, list("é".encode("utf-8"))[:1])))
    return ids


def streaming(ids):
    chunks = [heldout[i:i + 7] for i in range(0, len(heldout), 7)]  # cuts words, spaces, everything
    streamed = list(tokenization.encode_iterable(vocab, merges, chunks, SPECIAL, block_size=64))
    print(f"encode_iterable over {len(chunks):,} chunks gives the same ids: {streamed == ids}")


def exported(ids):
    hf = Tokenizer.from_str(tokenization.to_tokenizer_json(vocab, merges, SPECIAL))
    same = hf.encode(heldout).ids == ids
    print(f"tokenizers.Tokenizer from your tokenizer.json gives the same ids: {same}")


def library_bpe():
    lib = Tokenizer(models.BPE())
    lib.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenization.GPT2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=MAX_VOCAB + len(SPECIAL), special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    lib.train_from_iterator(train_docs, trainer)
    theirs = [tuple(pair.split(" ")) if isinstance(pair, str) else tuple(pair)
              for pair in json.loads(lib.to_str())["model"]["merges"]]
    b2u = tokenization.bytes_to_unicode()
    yours = [("".join(b2u[b] for b in left), "".join(b2u[b] for b in right)) for left, right in merges]
    same_prefix = next((i for i, (a, b) in enumerate(zip(yours, theirs)) if a != b), min(len(yours), len(theirs)))
    print(f"tokenizers' trainer: {len(theirs)} merges; the first {same_prefix} are the same as yours, "
          f"{len(set(yours) & set(theirs))} of yours are among its merges")
    print(f"bytes per token on the held-out text: tokenizers {heldout_bytes / len(lib.encode(heldout).ids):.2f}")


if vocab is None:
    print("train your BPE first (experiment 2)")
else:
    ids = attempt("bpe_encode / bpe_decode", round_trip)
    if ids is not None:
        attempt("encode_iterable (encode_chunk)", streaming, ids)
        attempt("to_tokenizer_json", exported, ids)
    attempt("tokenizers BPE trainer", library_bpe)
"""),
        kit.markdown("question_vocab_size", f"""
## Written answer 1 ({kit.points(VOCAB_SIZE_POINTS)}, graded by hand)

Look at your plot of bytes per token against vocabulary size. (a) Why do the first merges raise it
quickly and the later ones only slowly? (b) The held-out text is more Python documentation; what
would you expect on text of another kind (a novel, German, another programming language), and why?
(c) A larger vocabulary gives shorter sequences. Name two costs it has for the language model that
uses the tokenizer. Answer in a few sentences.
"""),
        kit.written_answer("answer_vocab_size", """
(a) Each merge takes the most frequent pair of the moment. The first ones are pairs that occur
everywhere (`e` + ` `, ` t`, `th`, `in`, ` the`): each saves one token at thousands of places. Later
merges make longer and rarer tokens (whole words, identifiers such as ` isinstance`) that occur
seldom, so each saves little; word frequencies fall off steeply (Zipf's law), hence the diminishing,
roughly logarithmic growth.
(b) The merges fit the training text. On text of another kind many learned tokens (` def`, ` self`,
` argument`) are of no use and its own frequent words were never merged, so it is split into shorter
pieces and the bytes per token drop, most for other languages and scripts (German umlauts and CJK
characters are several bytes each, often left as single bytes).
(c) The embedding matrix and the output layer both have one row per token (vocabulary x model width
parameters each, a large share of a small model), and the output softmax costs that much compute
and memory at every position. Each token also occurs less often in the training data, so rare tokens
get few updates and poorly trained embeddings (tokens never seen in training behave unpredictably).
In return shorter sequences fit more text into the context window and need fewer generation steps.
""", points=VOCAB_SIZE_POINTS),
        kit.markdown("about_experiment_pitfalls", """
## Experiment 5: numbers and other languages

How your trained tokenizer (1,024 tokens) cuts a few strings; `|` separates the tokens, and a `�`
is one byte of a character that the tokenizer keeps in two pieces (`ü` is two bytes in UTF-8).
"""),
        kit.code("experiment_pitfalls", r"""
texts = [" 2024", " 2025", " 1234567", " 3.14159", " 100000 + 23456 = 123456",
         " Tokenisierung ist überall", " the tokenizer", " isinstance(x, int)"]


def show():
    for text in texts:
        ids = tokenization.bpe_encode(vocab, merges, text, SPECIAL)
        pieces = [vocab[i].decode("utf-8", "replace") for i in ids]
        print(f"{len(text.encode('utf-8')) / len(ids):4.2f} bytes/token  {'|'.join(pieces)!r}")


if vocab is None:
    print("train your BPE first (experiment 2)")
else:
    attempt("bpe_encode", show)
"""),
        kit.markdown("question_numbers", f"""
## Written answer 2 ({kit.points(NUMBERS_POINTS)}, graded by hand)

Look at how your tokenizer splits the numbers and the German sentence above. With 1,024 tokens most
digits stay single bytes; in a large vocabulary (GPT-2 has 50,257 tokens) frequent numbers such as
years become one token each and other numbers are cut into chunks of varying length, as `100000` is
above. Why is that a problem for a model that has to do arithmetic, and what do some tokenizers do
about it? What does the German sentence's lower bytes per token mean for someone who uses the model
in German? Answer in a few sentences.
"""),
        kit.written_answer("answer_numbers", """
BPE cuts numbers by frequency, not by place value: a common number (a year, ` 100`) is one token,
another one of the same length is cut into chunks that depend on which digit pairs happened to be
frequent (` 1` + `00` + `00` + `0`), so the same digit position lands in different tokens from one
number to the next. To add or compare numbers the model
must first learn which digits each token holds and realign them, and carries cross token boundaries.
Some tokenizers therefore split every number into single digits (LLaMA, SentencePiece's
`split_digits`) or into groups of at most three digits (`\\p{N}{1,3}` in GPT-4's pre-tokenizer), so
that digits line up the same way every time.
The tokenizer was trained on English text, so German words (and the two-byte `ü`) break into short,
often meaningless pieces: the same content costs more tokens. A German user pays more per request
(priced by tokens), fits less text into the context window, waits longer for generation, and the
model works with less meaningful units. A training corpus that covers the languages in use evens
this out.
""", points=NUMBERS_POINTS),
    ]
