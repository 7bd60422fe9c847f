"""Chapter 10 assignment (evaluation): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``evaluation.py``: their perplexity of a small Llama against
``exp`` of Hugging Face's loss, with the per-batch mean that the seed outline computes beside it, and
their sliding windows at several strides; their BLEU and chrF against sacreBLEU on a paraphrase and on
a sentence that copies the reference's words in a meaningless order; the course's benchmark harness
(which calls their ``choice_log_likelihoods`` and ``multiple_choice_metrics``) against the LM
Evaluation Harness on the same multiple-choice task; and their kappa, Bradley-Terry and Elo ratings,
bootstrap interval and position-bias check on simulated judges. Every call of an exercise goes through
``attempt``, so an unfinished or broken exercise is reported and the rest still runs.
"""

METRIC_POINTS = 3  # written answers, graded by hand
JUDGE_POINTS = 3


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 10."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 10: evaluation",
            what="""
the metrics behind published numbers, computed the way the reference tools compute them: corpus
perplexity, the sliding-window likelihood of long texts and bits per byte; sacreBLEU's tokenizer,
corpus BLEU and chrF; the log-likelihood scoring of multiple-choice questions with `acc` and `acc_norm`;
and the statistics of judges: Cohen's kappa, Bradley-Terry and Elo ratings, bootstrap intervals and a
judge's position bias.
""",
            contract="""
and the module docstring the conventions all of them share: log-likelihoods in nats, token-weighted
corpus means, references as streams (sacreBLEU's layout), seeded random draws
""",
            written=(METRIC_POINTS, JUDGE_POINTS),
            more=f"""
Everything else in `{module}.py` is already written and calls your functions: the benchmark harness
(`Task`, `encode_pair`, `run_task`), the course's tasks (`course_tasks`), `task_contamination` (with
Chapter 6's `find_contaminated`), `corpus_scores` and the cached course leaderboard (`leaderboard`,
`python -m course_lib.evaluation`).
""",
            experiments="""
Run the experiments: they compare *your* functions with Hugging Face's loss, sacreBLEU and the LM
Evaluation Harness, and put your rating functions to work on simulated judges. An exercise you have
not done yet is reported, not fatal, so you can run them at any stage. Then answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import logging as pylogging
import math
import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

from course_lib.instruct import chat_tokenizer
from course_lib.tasks import pad_batch

logging.set_verbosity_error()
pylogging.getLogger("bitsandbytes").setLevel(pylogging.ERROR)  # optional CPU kernels it looks for on import
pylogging.getLogger("lm_eval").setLevel(pylogging.ERROR)
torch.set_num_threads(1)  # small models: a second thread costs more in synchronisation than it saves

tokenizer = chat_tokenizer()   # Chapter 1's tokenizer with Chapter 6's chat template
PAD = tokenizer.pad_token_id


def small_llama(seed, initializer_range=0.2):
    """A small Llama with random weights, drawn wider than usual so that its per-token losses differ."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256, pad_token_id=PAD,
                                        initializer_range=initializer_range)).eval()


model = small_llama(0)
'''),
        kit.markdown("about_experiment_perplexity", """
## Experiment 1: perplexity, per token and per batch

A small Llama with random weights reads six texts of very different lengths, in batches of two: your
`corpus_perplexity` (10.1) against `exp`
of Hugging Face's loss over all the texts' tokens at once, and beside them the mean of the batches'
perplexities (what the seed outline computes). Then one long text scored by your `sliding_window_nll`
(10.2) with a context of 32 tokens and strides from 32 (disjoint chunks) to 1, and your
`bits_per_byte` (10.3) of each.
"""),
        kit.code("experiment_perplexity", r'''
texts = ["Hello.", "The cat sat on the mat and looked at the door for a long time.", "Yes",
         "Python's standard library has a module for almost everything: json, re, pathlib, itertools.",
         "ok", "A language model assigns a probability to every continuation of a text."]


def perplexity():
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    batches = []
    for start in range(0, len(ids), 2):
        input_ids, attention_mask = pad_batch(ids[start:start + 2], PAD)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask})
    yours = evaluation.corpus_perplexity(model, batches)
    nll = count = 0.0
    per_batch = []
    with torch.no_grad():
        for batch in batches:
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            n = int((labels[:, 1:] != -100).sum())
            nll, count = nll + loss.item() * n, count + n
            per_batch.append(math.exp(loss.item()))
    print(f"your perplexity {yours['perplexity']:.2f} over {yours['tokens']} tokens; exp(HF loss over all tokens) "
          f"{math.exp(nll / count):.2f}; mean of the batches' perplexities {sum(per_batch) / len(per_batch):.2f}")


def windows():
    text = " ".join(texts * 4)
    # after an end-of-text token, as every document began in pre-training: each token of the text is predicted
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    n_bytes = len(text.encode("utf-8"))
    for stride in (32, 16, 8, 4, 1):
        scored = evaluation.sliding_window_nll(model, ids, 32, stride)
        print(f"stride {stride:>2}: {ids.shape[1] - 1 - scored['tokens']} of the text's {ids.shape[1] - 1} tokens "
              f"unscored, perplexity {math.exp(scored['nll'] / scored['tokens']):.2f}, "
              f"{evaluation.bits_per_byte(scored['nll'], n_bytes):.3f} bits per byte")


attempt("corpus_perplexity (10.1)", perplexity)
attempt("sliding_window_nll and bits_per_byte (10.2, 10.3)", windows)
'''),
        kit.markdown("about_experiment_bleu", """
## Experiment 2: BLEU and chrF against sacreBLEU

Three systems translate the same two sentences: one close to the reference, one a correct paraphrase,
and one that reuses the reference's words in an order that means nothing. Your `corpus_bleu` (10.5,
with your `tokenize_13a`, 10.4) and `corpus_chrf` (10.6) beside sacreBLEU's.
"""),
        kit.code("experiment_bleu", r'''
import sacrebleu

references = [["The committee approved the new budget on Monday.", "Prices rose by three percent last year."]]
systems = {"close": ["The committee approved the new budget on Monday.", "Prices rose by 3 percent last year."],
           "paraphrase": ["On Monday the panel passed the new spending plan.", "Last year, costs went up three per cent."],
           "word salad": ["Monday the budget committee on new approved the.", "Year last three by rose prices percent."]}


def bleu():
    for name, hypotheses in systems.items():
        yours = evaluation.corpus_bleu(hypotheses, references)
        theirs = sacrebleu.corpus_bleu(hypotheses, references)
        print(f"{name:>10}: BLEU yours {yours['score']:6.2f}, sacreBLEU {theirs.score:6.2f}; "
              f"chrF yours {evaluation.corpus_chrf(hypotheses, references):6.2f}, "
              f"sacreBLEU {sacrebleu.corpus_chrf(hypotheses, references).score:6.2f}")


attempt("tokenize_13a, corpus_bleu and corpus_chrf (10.4-10.6)", bleu)
'''),
        kit.markdown("about_experiment_choice", """
## Experiment 3: multiple choice, the harness and the LM Evaluation Harness

The course's harness (`run_task`) scores the first twelve questions of the course's `stdlib_mc` task
(the right module against three others, of different lengths) with your `choice_log_likelihoods`
(10.7) and `multiple_choice_metrics` (10.8). The LM Evaluation Harness runs the same task, written as
one of its YAML tasks, on the same model. The cell prints both, and how often `acc` and `acc_norm`
pick a different answer.
"""),
        kit.code("experiment_choice", r'''
import json
import tempfile
from pathlib import Path


def choice():
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from course_lib.evaluation import Task, course_tasks, lm_eval_task_yaml, run_task

    full = next(t for t in course_tasks(n=12, num_fewshot=1) if t.name == "stdlib_mc")
    task = Task("course_stdlib_mc", full.output_type, full.docs, full.num_fewshot, full.fewshot_docs)
    ours = run_task(model, tokenizer, task)
    folder = Path(tempfile.mkdtemp())
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in task.docs))
    data.with_suffix(".fewshot.jsonl").write_text("".join(json.dumps(d) + "\n" for d in task.fewshot_docs))
    (folder / f"{task.name}.yaml").write_text(lm_eval_task_yaml(task, data))
    out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, device="cpu"),
                          tasks=[task.name], num_fewshot=task.num_fewshot, bootstrap_iters=0, verbosity="ERROR",
                          task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    theirs = out["results"][task.name]
    differ = sum(s["acc"] != s["acc_norm"] for s in ours["samples"])
    print(f"yours: acc {ours['metrics']['acc']:.3f}, acc_norm {ours['metrics']['acc_norm']:.3f}; "
          f"lm-eval: acc {theirs['acc,none']:.3f}, acc_norm {theirs['acc_norm,none']:.3f}")
    print(f"acc and acc_norm disagree on {differ} of {len(task.docs)} questions; 95 % interval of acc_norm "
          f"{ours['intervals']['acc_norm'][0]:.2f}-{ours['intervals']['acc_norm'][1]:.2f}")
    print("first question:", repr(ours["samples"][0]["prompt"][-70:]))


attempt("choice_log_likelihoods and multiple_choice_metrics (10.7, 10.8)", choice)
'''),
        kit.markdown("about_experiment_judges", """
## Experiment 4: judges and ratings

Simulated data with known answers. Two raters label 200 answers as good or bad; the second agrees with
the first 85 % of the time, and both say "good" about 90 % of the time: their raw agreement and your
`cohen_kappa` (10.9). Four models with true strengths `[0, 0.5, 1, 1.5]` meet in 600 simulated
battles: your `bradley_terry` (10.10) and `elo_ratings` (10.11) of them, the Elo ratings again with the
battles in reverse order, and your `bootstrap_interval` (10.12) of the strongest model's win rate. A
judge that prefers the first answer it sees one time in four, whatever the answers: your
`position_bias` (10.13).
"""),
        kit.code("experiment_judges", r'''
def judges():
    r = random.Random(0)
    first = ["good" if r.random() < 0.9 else "bad" for _ in range(200)]
    second = [a if r.random() < 0.85 else r.choice(["good", "good", "good", "bad"]) for a in first]
    agreement = sum(a == b for a, b in zip(first, second)) / len(first)
    print(f"raw agreement {agreement:.2f}, your kappa {evaluation.cohen_kappa(first, second):.2f}")

    strengths = [0.0, 0.5, 1.0, 1.5]
    battles = []
    for _ in range(600):
        a, b = r.sample(range(4), 2)
        battles.append((a, b, 1 if r.random() < 1 / (1 + math.exp(strengths[b] - strengths[a])) else 0))
    fitted = evaluation.bradley_terry(battles, 4)
    print("Bradley-Terry (true differences to model 0: 0.5, 1, 1.5):",
          [round(x - fitted[0], 2) for x in fitted])
    print("Elo:", [round(x) for x in evaluation.elo_ratings(battles, 4)],
          "reversed order:", [round(x) for x in evaluation.elo_ratings(battles[::-1], 4)])
    wins = torch.tensor([float(o if a == 3 else 1 - o) for a, b, o in battles if 3 in (a, b)])
    low, high = evaluation.bootstrap_interval(wins, "mean", 2000, 0.95, 0)
    print(f"model 3 wins {wins.mean():.2f} of its {len(wins)} battles, 95 % interval {low:.2f}-{high:.2f}")

    verdicts = [r.choice(["A", "B"]) for _ in range(100)]
    biased = [("A" if r.random() < 0.25 else v) for v in verdicts]
    swapped = [("A" if r.random() < 0.25 else {"A": "B", "B": "A"}[v]) for v in verdicts]
    print("a judge with a first-position habit:", evaluation.position_bias(biased, swapped))


attempt("cohen_kappa, bradley_terry, elo_ratings, bootstrap_interval, position_bias (10.9-10.13)", judges)
'''),
        kit.markdown("question_metrics", f"""
## Written answer 1 ({kit.points(METRIC_POINTS)}, graded by hand)

(a) Use Experiment 1: why does the mean of the batches' perplexities differ from the corpus
perplexity, and which one changes if you shuffle the texts into other batches? (b) What does the
stride change in how each token is scored, and why does a trained model's perplexity usually fall as
the stride shrinks (the book's Figure 1 shows it for the course model; this random one has nothing to
gain from context)? Why can two models with different tokenizers not be compared by perplexity, but
can be by bits per byte? (c) Use Experiment 2: what do BLEU and chrF say about the
paraphrase and the word salad, and what does that tell you about using them to compare chat models?
"""),
        kit.written_answer("answer_metrics", """
(a) The mean of per-batch perplexities gives every batch the same weight whatever its number of
tokens, and averages exponentials (a mean of exp is not exp of a mean): a batch of two short texts
counts as much as a batch of long ones. The corpus perplexity is exp of one token-weighted mean, the
same whatever the batching; the per-batch mean changes when the texts are regrouped.
(b) With a smaller stride every scored token is predicted from more context (at least max_length -
stride tokens), so its probability is higher on average. Perplexity is per token: a tokenizer that cuts
the same text into fewer, longer tokens has fewer, harder predictions, so the per-token figure is not
comparable. Bits per byte divides the same total negative log-likelihood of the text by its length in
bytes, which does not depend on the tokenizer.
(c) BLEU gives the paraphrase a low score although it is a correct translation (few shared 4-grams),
and the word salad a unigram precision near 100 % and a nonzero score; chrF is kinder to the paraphrase's
shared character n-grams but still far below the close system. Both measure surface overlap with one
reference, not meaning: for chat models, whose right answers can be worded in many ways, they
under-rate correct but different answers; use several references, task checkers or judges instead.
""", points=METRIC_POINTS),
        kit.markdown("question_judges", f"""
## Written answer 2 ({kit.points(JUDGE_POINTS)}, graded by hand)

(a) Use Experiment 4: why is kappa much lower than the raw agreement? (b) Why do the Elo ratings
change when the same battles come in reverse order, and the Bradley-Terry fit does not? Which would
you publish, and with what beside the numbers? (c) A judge model prefers the answer shown first. How
do you measure that, and how do you keep it out of a leaderboard?
"""),
        kit.written_answer("answer_judges", """
(a) Both raters say "good" about 90 % of the time, so they would agree on about 0.9 * 0.9 + 0.1 * 0.1 =
82 % of answers by chance alone; kappa measures agreement beyond that, (p_o - p_e) / (1 - p_e), which is
small when the observed agreement is not far above 82 %.
(b) Elo updates after each battle from the current ratings with a fixed step k, so recent battles weigh
more and the final ratings depend on the order; Bradley-Terry maximises the likelihood of all battles at
once, a function of the win counts only, so any order gives the same fit. Publish the Bradley-Terry
ratings with confidence intervals (bootstrap over battles), and the number of battles per model.
(c) Ask for each pair twice with the answers swapped: a consistent judge names the same answer both
times; position_bias gives the consistency and the share of verdicts for the first position (0.5
without bias). Keep only pairs judged consistently (or count an inconsistent pair as a tie), always
judge both orders, and randomise which answer comes first.
""", points=JUDGE_POINTS),
    ]
