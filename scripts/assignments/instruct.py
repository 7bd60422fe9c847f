"""Chapter 6 assignment (instruct): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``instruct.py`` on raw output of the course's generators
(``course_lib.instruction_data.raw_examples``: arithmetic and sorting, which need no corpus): their
record conversions both ways and the error a malformed record gets; their chat rendering against
``apply_chat_template`` of a tokenizer trained in the notebook with the course's special tokens and
chat template, drawn token by token; their exact and near-duplicate removal of the raw examples,
their MinHash estimates against the exact Jaccard similarity (plotted with the LSH curve), and their
decontamination; a row-level split against their grouped split (how many test items leak); and their
typed templates, shot selection and few-shot prompts. Every call of an exercise goes through
``attempt``, so an unfinished or broken exercise is reported and the rest still runs.
"""

MASK_POINTS = 2  # written answers, graded by hand
SPLIT_POINTS = 3


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 6."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 6: instruction data and prompts",
            what="""
what turns a pile of examples into data an instruction-tuned model can learn from, and the prompts
that get answers out of a model that was never tuned. The record formats (Alpaca and chat messages,
both ways, with errors that name the bad record), the chat template with the mask of the tokens a
completion-only loss trains on, cleaning (exact and MinHash near-duplicate removal, decontamination by
n-gram overlap), a split by item rather than by row, and prompts (typed templates, few-shot examples
within a token budget, chain of thought, instructions generated from records).
""",
            contract="""
and the module docstring the conventions all of them share: messages, errors that name the record and
the field, normalised text, seeds, inputs left alone
""",
            written=(MASK_POINTS, SPLIT_POINTS),
            more=f"""
Everything else in `{module}.py` is already written: the chat template `CHAT_TEMPLATE`,
`chat_tokenizer`, the MinHash hash functions (`shingle_hash`, `minhash_permutations`),
`lsh_probability`, `PromptTemplate`, `extract_answer` and the plots. `course_lib/instruction_data.py`
builds the course instruction data set that Chapters 7-10 use; it does not use your exercises, so it
is the same for everyone. Its generators (`raw_examples`) give the raw material of the experiments.
""",
            experiments="""
Run the experiments: they apply *your* functions to raw examples of the course's generators and
compare them with `transformers`' chat template, the exact Jaccard similarity and a split by rows.
An exercise you have not done yet is reported, not fatal, so you can run them at any stage. Then
answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import json
import random

import torch

from course_lib.instruction_data import jaccard, normalize_text, raw_examples, user_content, word_shingles

# Raw output of two of the course's generators (items drawn with replacement: repeats included).
raw = raw_examples("arithmetic", 600, seed=1) + raw_examples("sorting", 600, seed=1)
texts = [user_content(r["instruction"], r["input"]) + "\n" + r["output"] for r in raw]
groups = [r["group"] for r in raw]
print(f"{len(raw)} raw examples of {len(set(groups))} distinct items; one of them:")
print(json.dumps(raw[601], indent=1))
'''),
        kit.markdown("about_experiment_formats", """
## Experiment 1: Alpaca records and chat messages

Your `alpaca_to_messages` (6.1) turns three raw examples, as Alpaca records, into conversations with a
system prompt; your `messages_to_alpaca` (6.2) turns them back. The sorting example has an `input`
(the numbers): in the chat format it joins the instruction in the user turn, so the way back gives one
instruction and no input. Last, a record with a typo in a field name and a conversation that ends with
the user: each must fail with an error that names the record and the field.
"""),
        kit.code("experiment_formats", r'''
records = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in (raw[0], raw[1], raw[601])]
conversations = attempt("alpaca_to_messages", instruct.alpaca_to_messages, records, system="Answer with the result only.")
if conversations is not None:
    print(json.dumps(conversations[2], indent=1))
    back = attempt("messages_to_alpaca", instruct.messages_to_alpaca, conversations)
    if back is not None:
        print("back to Alpaca:", json.dumps(back[2]))


def malformed():
    for name, call in (("alpaca_to_messages", lambda: instruct.alpaca_to_messages(records + [{"instruction": "Hi.", "ouput": "Hello."}])),
                       ("messages_to_alpaca", lambda: instruct.messages_to_alpaca(
                           [[{"role": "user", "content": "Hi."}], [{"role": "user", "content": "Hi."}]]))):
        try:
            call()
            print(f"{name}: no error for a malformed record")
        except ValueError as err:
            print(f"{name} refuses it: {err}")


attempt("record checks", malformed)
'''),
        kit.markdown("about_experiment_template", """
## Experiment 2: the chat template and the assistant mask

A tokenizer is trained here with Hugging Face `tokenizers` on the raw examples (byte-level BPE, 500
tokens, the course's special tokens), and given the course's chat template `CHAT_TEMPLATE`. Your
`render_chat` (6.3) renders a two-turn conversation with it; `apply_chat_template(...,
return_assistant_tokens_mask=True)` renders the same with Jinja. The cell compares text, ids and mask,
then draws your tokens: shaded are the ones your mask marks, the tokens a completion-only loss trains on.
"""),
        kit.code("experiment_template", r'''
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                                   special_tokens=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
chat = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>",
                               chat_template=instruct.CHAT_TEMPLATE)
messages = [{"role": "system", "content": "Answer with the result only."},
            {"role": "user", "content": user_content(raw[601]["instruction"], raw[601]["input"])},
            {"role": "assistant", "content": raw[601]["output"]},
            {"role": "user", "content": raw[0]["instruction"]},
            {"role": "assistant", "content": raw[0]["output"]}]
mine = attempt("render_chat", instruct.render_chat, bpe.to_str(), messages)
if mine is not None:
    theirs = chat.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    print(mine["text"])
    print(f"same text as apply_chat_template: {mine['text'] == chat.apply_chat_template(messages, tokenize=False)}; "
          f"same ids: {mine['input_ids'] == list(theirs['input_ids'])}; "
          f"same mask: {mine['assistant_masks'] == list(theirs['assistant_masks'])}")
    print(f"{sum(mine['assistant_masks'])} of {len(mine['input_ids'])} tokens are trained: "
          f"{chat.decode([i for i, m in zip(mine['input_ids'], mine['assistant_masks']) if m])!r}")
    prompt = attempt("render_chat", instruct.render_chat, bpe.to_str(), messages[:2], True)
    if prompt is not None:
        print(f"with add_generation_prompt the text ends in {prompt['text'][-40:]!r}")
    if plt is not None:
        tokens = [chat.decode([i]) for i in mine["input_ids"]]
        ax = instruct.plot_assistant_mask(tokens, mine["assistant_masks"], per_row=14)
        ax.set_title("your render_chat: shaded tokens are trained")
        plt.show()
'''),
        kit.markdown("about_experiment_cleaning", """
## Experiment 3: duplicates, near duplicates and contamination in raw generator output

The generators draw items with replacement, so the raw examples repeat themselves: the same item in
the same words, and the same item in other words (a paraphrase). The cell counts what your
`exact_dedup` (6.4) and your `near_dedup` (6.7, with your `minhash_signatures` 6.5 and
`lsh_candidate_pairs` 6.6) remove at two thresholds, and how many of them are *different items*
that only share a template. Then it compares your MinHash estimates with the exact Jaccard similarity
on 400 random pairs, and plots them beside the probability that LSH (32 bands of 4 rows) makes a
pair of that similarity a candidate. Last, your `find_contaminated` (6.8) checks the second half of the
raw examples against the questions of the first half, at n = 4 and n = 13 words.
"""),
        kit.code("experiment_cleaning", r'''
kept = attempt("exact_dedup", instruct.exact_dedup, texts)
if kept is not None:
    print(f"exact_dedup keeps {len(kept)} of {len(texts)} texts; distinct items: {len(set(groups))}")
for threshold in (0.8, 0.5):
    result = attempt("near_dedup", instruct.near_dedup, texts, threshold=threshold)
    if result is not None:
        other_item = sum(groups[i] != groups[j] for i, j, _ in result["duplicates"])
        print(f"near_dedup(threshold={threshold}) keeps {len(result['keep'])}; of the {len(result['duplicates'])} "
              f"removed, {other_item} were a different item than the text that removed them")

signatures = attempt("minhash_signatures", instruct.minhash_signatures, texts[:300])
if signatures is not None:
    rng = random.Random(0)
    pairs = [tuple(rng.sample(range(300), 2)) for _ in range(400)]
    pairs += [(i, j) for i in range(300) for j in range(i + 1, 300) if groups[i] == groups[j]]
    exact = [jaccard(word_shingles(texts[i], 3), word_shingles(texts[j], 3)) for i, j in pairs]
    estimate = [(signatures[i] == signatures[j]).float().mean().item() for i, j in pairs]
    print(f"{len(pairs)} pairs: largest |estimate - exact| = {max(abs(a - b) for a, b in zip(estimate, exact)):.3f}")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(exact, estimate, s=8, alpha=0.5, label="your MinHash estimate (128 hash functions)")
        s = torch.linspace(0, 1, 101)
        ax.plot(s, instruct.lsh_probability(s, 32, 4), color="C1", label="P(LSH candidate), 32 bands x 4 rows")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set_xlabel("exact Jaccard similarity of the word 3-grams")
        ax.set_ylabel("estimate / probability")
        ax.legend(fontsize=8)
        plt.show()

train_side = texts[:300] + texts[600:900]
eval_side = [user_content(r["instruction"], r["input"]) for r in raw[300:600] + raw[900:]]
for n in (4, 13):
    flagged = attempt("find_contaminated", instruct.find_contaminated, train_side, eval_side, n)
    if flagged is not None:
        print(f"find_contaminated(n={n}): {len(flagged)} of {len(train_side)} training texts share text with the evaluation half")
'''),
        kit.markdown("about_experiment_split", """
## Experiment 4: splitting by row leaks items

Your `grouped_split` (6.9) splits by the `group` of each example, the item it asks about. Giving it one
group per row is the row-level split of `datasets`' `train_test_split`. For both, the cell counts the
test examples whose item also occurs in training: those test examples measure memory.
"""),
        kit.code("experiment_split", r'''
def leaks(split):
    seen = {groups[r] for r in split["train"]}
    return sum(groups[r] in seen for r in split["test"]), len(split["test"])


for name, keys in (("by row", list(range(len(raw)))), ("by item (group)", groups)):
    split = attempt("grouped_split", instruct.grouped_split, keys, 0.2, 0.1, 0)
    if split is not None:
        leaked, total = leaks(split)
        print(f"split {name}: train {len(split['train'])}, validation {len(split['validation'])}, test {total}; "
              f"test examples whose item is in train: {leaked} ({leaked / total:.1%})")
'''),
        kit.markdown("about_experiment_prompts", """
## Experiment 5: templates, shots and prompts

Your `fill_template` (6.10) is asked to fill the seed outline's template with a value missing, then
with a record of its own. `PromptTemplate` (implemented, on your function) declares types. Your
`select_shots` (6.11) picks up to four shots for a sorting question from 40 training examples, at
random and by similarity (Jaccard similarity of word 2-grams), within a budget of 120 tokens of the
tokenizer of Experiment 2, measured in the prompt's format with your `few_shot_prompt` (6.12), which
then writes the prompt, plain and with chain of thought (whose shots are longer: fewer fit).
Your `sample_instructions` (6.13) last turns three records into questions with their answers.
"""),
        kit.code("experiment_prompts", r'''
def seed_template():
    try:
        print(instruct.fill_template("What is the {location} of the {event}?", {"event": "PyCon US"}))
    except ValueError as err:
        print(f"fill_template refuses a missing slot: {err}")
    print(instruct.fill_template("Where is {event} held?", {"event": "PyCon US 2024"}))
    template = instruct.PromptTemplate("What is {a} plus {b}?", a="int", b="int")
    print(template.fill(a=37, b=45))
    try:
        template.fill(a="37", b=45)
    except TypeError as err:
        print(f"PromptTemplate refuses a str for an int: {err}")


attempt("fill_template", seed_template)

pool = raw[600:640]
query = raw[1150]
question = user_content(query["instruction"], query["input"])
shots = [{"question": user_content(r["instruction"], r["input"]), "answer": r["output"], "rationale": r["rationale"]}
         for r in pool]


def shot_lengths(chain_of_thought):
    """Tokens each shot adds to the prompt, in the format asked for."""
    base = len(chat(instruct.few_shot_prompt(question, [], chain_of_thought))["input_ids"])
    return [len(chat(instruct.few_shot_prompt(question, [s], chain_of_thought))["input_ids"]) - base for s in shots]


similarity = torch.tensor([jaccard(word_shingles(question, 2), word_shingles(s["question"], 2)) for s in shots])
for name, kwargs, cot in (("random", {"seed": 0}, False), ("nearest", {"scores": similarity}, False),
                          ("nearest, chain of thought", {"scores": similarity}, True)):
    lengths = attempt("few_shot_prompt", shot_lengths, cot)
    chosen = attempt("select_shots", instruct.select_shots, lengths, 120, 4, **kwargs) if lengths else None
    if chosen is not None:
        prompt = attempt("few_shot_prompt", instruct.few_shot_prompt, question, [shots[i] for i in chosen], cot)
        if prompt is not None:
            print(f"\n{name}: shots {chosen}, {sum(lengths[i] for i in chosen)} tokens of shots, "
                  f"{len(chat(prompt)['input_ids'])} in the prompt")
            print(prompt)

records = [{"name": "urlsplit", "module": "urllib.parse"}, {"name": "dumps", "module": "json"},
           {"name": "OrderedDict", "module": "collections"}]
templates = [{"instruction": "Which standard library module documents `{name}`?", "output": "{module}"},
             {"instruction": "Where does `{name}` come from?", "output": "the module {module}"}]
generated = attempt("sample_instructions", instruct.sample_instructions, records, templates, 4, 0)
if generated is not None:
    print()
    for example in generated:
        print(f"{example['instruction']!r} -> {example['output']!r}")
'''),
        kit.markdown("question_mask", f"""
## Written answer 1 ({kit.points(MASK_POINTS)}, graded by hand)

Use Experiment 2. Which tokens does your assistant mask mark, and why are the user's and the system's
tokens (and the `<|im_start|>assistant` header) left out of the loss? Why must `<|im_end|>` be in the
mask? What goes wrong at inference if the template's generation prompt differs from what the model saw
in training (for example, if `<|im_start|>assistant\\n` were appended twice)?
"""),
        kit.written_answer("answer_mask", """
The mask marks what an assistant writes: the content of every assistant turn and the <|im_end|> that
closes it. The loss is the model's likelihood of its own replies given the conversation so far; the
system prompt, the user's turns and the role headers are the condition, not something the model will
ever have to produce, so training on them spends capacity on predicting users (and rewards the model
for continuing a user's message) while the reply tokens are a small share of the sequence; masking
them makes the loss a completion-only loss. <|im_end|> must be trained because it is how the model
ends its turn: a model never trained to emit it goes on writing, inventing the next user turn, and
generation has no clean stop. At inference the prompt ends with the generation prompt
<|im_start|>assistant\\n; the model learned to answer right after exactly that sequence of tokens. A
different one (a doubled header, a missing newline, a trailing space) puts it in a context it never
saw: it may write another header, a role name, or answer worse, and since the tokens differ from
training, the effect is silent.
""", points=MASK_POINTS),
        kit.markdown("question_split", f"""
## Written answer 2 ({kit.points(SPLIT_POINTS)}, graded by hand)

Use Experiments 3 and 4. (a) Why does the row-level split leak, what does a test score measured on it
overestimate, and why does splitting by group fix it? (b) At which threshold did near-duplicate
removal start to remove *different* items, and why are short, templated texts a hard case for MinHash
near-duplicate detection? What would you use to deduplicate a synthetic data set instead, and when is
MinHash the right tool?
"""),
        kit.written_answer("answer_split", """
(a) The generators produce several examples per item (exact repeats and paraphrases in other
templates). A row-level split assigns rows independently, so most items with several rows end up with
some rows in training and some in test: the model sees the item, and its answer, during training, and
the test score measures how well it remembers answers rather than how well it solves new items. It
overestimates generalisation (here to new numbers), and the gap grows with the number of copies.
Splitting by group decides per item, so all phrasings of an item land on one side and no test item
was seen in training.
(b) At 0.8 almost all removed texts are copies of the same item; at 0.5 many removed texts are
different items that share a template (the same sentence with one number changed shares most of its
word 3-grams). Short texts have few shingles, and a template contributes most of them, so the Jaccard
similarity of two different items is high and a threshold that catches paraphrases also catches
different items. For synthetic data, deduplicate on the structure the generator knows: a canonical key
of the item (the group), exact duplicates by normalised text. MinHash with LSH is the right tool for
large collections of long natural text (web documents, code files) without such keys, where near
duplicates (boilerplate, mirrors, small edits) share most of their shingles and different documents
share few, and where comparing all pairs is impossible.
""", points=SPLIT_POINTS),
    ]
