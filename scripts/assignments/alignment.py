"""Chapter 9 assignment (alignment): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answers below must never reach students (nbgrader strips them from the
notebook it writes; this file is not part of any release).

Every experiment runs the student's own ``alignment.py``: their log-probabilities and DPO loss against
TRL's ``DPOTrainer`` on a small Llama and three preference pairs; their GAE on a sequence that ends
early, and their clipped PPO objective drawn against the ratio for both signs of the advantage; their
group advantages on checker rewards; and a short DPO run of a small course model on preference pairs
built from its own answers (Chapter 6's checkers), through the course's ``train_dpo``, which calls their
functions. Every call of an exercise goes through ``attempt``, so an unfinished or broken exercise is
reported and the rest still runs.
"""

DPO_POINTS = 3  # written answers, graded by hand
RL_POINTS = 3


def cells(kit) -> list:
    """Introduction, setup, the experiments and the written questions of Chapter 9."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 9: preference alignment",
            what="""
the losses and estimators of preference alignment: the log-probability of a completion, a reward
model's score and its Bradley-Terry loss, DPO and its variants, and the pieces of PPO (KL-penalised
rewards, generalised advantage estimation, whitening, the clipped policy and value losses, entropy)
and of GRPO (group-relative advantages and its loss).
""",
            contract="""
and the module docstring the conventions all of them share: prompt-then-completion rows with a
completion mask, per-token tensors of the RL methods that cover the completion only, token-weighted
masked means, float32 results
""",
            written=(DPO_POINTS, RL_POINTS),
            more=f"""
Everything else in `{module}.py` is already written and calls your functions: the rollouts
(`sample_completions`, Chapter 4's sampling with a KV cache), `preference_pairs` (the model's own
answers judged by Chapter 6's checkers), `pair_batch`, the loops `train_dpo`, `train_grpo`,
`train_reward_model` and `train_ppo` (Chapter 5's optimizer, schedule and clipping), the
`RewardModel`, `kl_to_reference`, `sampled_accuracy`, the report and the cached aligned models.
""",
            experiments="""
Run the experiments: they compare *your* functions with TRL's `DPOTrainer`, draw your PPO objective,
and train a small model with your DPO loss. An exercise you have not done yet is reported, not fatal,
so you can run them at any stage. Then answer the two questions.
""",
        ),
        kit.helpers(),
        kit.setup(r'''
import copy
import dataclasses
import logging as pylogging

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

from course_lib.instruct import chat_tokenizer
from course_lib.instruction_data import check_answer, instruction_dataset

logging.set_verbosity_error()
pylogging.getLogger("bitsandbytes").setLevel(pylogging.ERROR)  # optional CPU kernels it looks for on import
torch.set_num_threads(1)  # small models: a second thread costs more in synchronisation than it saves

tokenizer = chat_tokenizer()   # Chapter 1's tokenizer with Chapter 6's chat template
PAD = tokenizer.pad_token_id


def small_llama(seed):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=256, pad_token_id=PAD))


reference = small_llama(0).eval()
policy = copy.deepcopy(reference).train()   # TRL logs a model in training mode under "train"
with torch.no_grad():            # the policy: the reference moved a little, as after a few updates
    for p in policy.parameters():
        p.add_(0.05 * torch.randn_like(p))
'''),
        kit.markdown("about_experiment_dpo", """
## Experiment 1: your DPO loss against TRL's `DPOTrainer`

TRL's `DPOTrainer` prepares three preference pairs (prompt, chosen, rejected) with the chat tokenizer,
and computes its loss and its logged rewards on the policy and the reference above. The cell feeds
your `sequence_log_probs` (9.2) the same batch, gives the sums to your `dpo_loss` (9.5), and prints
both sides for each loss type.
"""),
        kit.code("experiment_dpo", r'''
import tempfile

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

pairs_data = {"prompt": ["What is 12 plus 30?", "Reverse the word \"lion\".", "Sort these: pear apple fig"],
              "chosen": [" 42", " noil", " apple fig pear"], "rejected": [" 41 or so", " lion lion", " pear"]}


def dpo():
    for loss_type in ("sigmoid", "ipo", "hinge"):
        args = DPOConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True, bf16=False, beta=0.3,
                         loss_type=[loss_type], per_device_train_batch_size=3, save_strategy="no", disable_tqdm=True)
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_dict(pairs_data),
                             processing_class=tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            trl_loss = trainer.compute_loss(policy, batch).item()
            logps = [alignment.sequence_log_probs(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                                  batch["input_ids"], batch["completion_mask"]) for m in (policy, reference)]
        (pc, pr), (rc, rr) = logps[0].chunk(2), logps[1].chunk(2)
        lengths = batch["completion_mask"].sum(1).chunk(2)
        out = alignment.dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, chosen_lengths=lengths[0],
                                 rejected_lengths=lengths[1])
        logged = trainer._metrics["train"]
        print(f"{loss_type:>7}: your loss {out['losses'].mean().item():.6f}, TRL's {trl_loss:.6f}; "
              f"your chosen reward {out['chosen_rewards'].mean().item():+.5f}, TRL's {logged['rewards/chosen'][-1]:+.5f}")


attempt("sequence_log_probs and dpo_loss (9.2, 9.5)", dpo)
'''),
        kit.markdown("about_experiment_ppo", """
## Experiment 2: GAE and the clipped objective

Your `gae` (9.7) on two sequences of four tokens, the second finished after two (whatever its rewards
and values hold after that must not matter), then your `ppo_policy_loss` (9.9) for one token whose
ratio `pi / pi_old` sweeps from 0.5 to 1.5, with a positive and with a negative advantage: the curves
are the objective PPO maximises (minus your loss).
"""),
        kit.code("experiment_ppo", r'''
def ppo():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 99.0, 99.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, -99.0, -99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    advantages, returns = alignment.gae(rewards, values, mask, gamma=1.0, lam=0.9)
    print("advantages:", advantages.tolist())
    print("returns:   ", returns.tolist())
    ratios = torch.linspace(0.5, 1.5, 101)
    old = torch.zeros(1, 1)
    curves = {}
    for advantage in (1.0, -1.0):
        curves[advantage] = [-alignment.ppo_policy_loss(r.log().view(1, 1), old, torch.full((1, 1), advantage),
                                                        torch.ones(1, 1), clip_range=0.2)["loss"].item() for r in ratios]
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 3))
        for advantage, curve in curves.items():
            ax.plot(ratios, curve, label=f"A = {advantage:+.0f}")
        ax.axvspan(0.8, 1.2, color="0.9")
        ax.set_xlabel("ratio pi / pi_old")
        ax.set_ylabel("clipped objective (minus your loss)")
        ax.legend()
        plt.show()


attempt("gae and ppo_policy_loss (9.7, 9.9)", ppo)
'''),
        kit.markdown("about_experiment_grpo", """
## Experiment 3: group-relative advantages

Four questions of Chapter 6's naming family, eight answers each, scored 1 or 0 by the checker (the
answers are made up here, to show the cases): your `grpo_advantages` (9.12) with the three scalings.
"""),
        kit.code("experiment_grpo", r'''
def grpo():
    rewards = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0,
                            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float32)
    for scale in ("group", "batch", "none"):
        advantages = alignment.grpo_advantages(rewards, 8, scale=scale).view(4, 8)
        print(f"{scale:>5}:", [[round(a, 2) for a in row[:2]] for row in advantages.tolist()],
              "(the first two answers of each question)")


attempt("grpo_advantages (9.12)", grpo)
'''),
        kit.markdown("about_experiment_training", """
## Experiment 4: DPO on a small course model, with your loss

A small course model (Chapter 3, two layers of width 64, random weights) answers eight naming
questions twice each; `preference_pairs` keeps, for each question it got wrong, the data set's answer
as chosen and its own wrong answer as rejected. `train_dpo` then trains it for 30 steps on those
pairs with your `sequence_log_probs` and your `dpo_loss`, against a frozen copy. The cell plots the
loss and the reward accuracy and prints what the model answers before and after.
"""),
        kit.code("experiment_training", r'''
from course_lib.language_model import CourseLMForCausalLM, course_lm_config


def training():
    torch.manual_seed(0)
    model = CourseLMForCausalLM(course_lm_config("cpu", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    rows = list(instruction_dataset("train", "naming").select(range(8)))
    pairs = alignment.preference_pairs(model, tokenizer, rows, samples=2, max_new_tokens=4)
    print(f"{len(pairs)} pairs; the first: chosen {pairs[0]['chosen']!r}, rejected {pairs[0]['rejected']!r}")
    config = dataclasses.replace(alignment.align_preset("dpo"), total_steps=30, warmup_steps=3,
                                 batch_size=len(pairs), lr=3e-3, max_new_tokens=4, sft_weight=0.0)
    history = alignment.train_dpo(config, model, frozen, tokenizer, pairs)
    print(f"loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}, reward accuracy "
          f"{history['accuracy'][0]:.2f} -> {history['accuracy'][-1]:.2f}")
    if plt is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
        left.plot(history["loss"])
        left.set_ylabel("your DPO loss")
        right.plot(history["margin"])
        right.set_ylabel("reward margin")
        for ax in (left, right):
            ax.set_xlabel("step")
        fig.tight_layout()
        plt.show()


attempt("DPO training (9.1, 9.2, 9.5; train_dpo)", training)
'''),
        kit.markdown("question_dpo", f"""
## Written answer 1 ({kit.points(DPO_POINTS)}, graded by hand)

(a) Starting from the KL-constrained objective `max E[r(x, y)] - beta KL(pi || pi_ref)`, write the
optimal policy and solve it for the reward. Why does the normaliser `Z(x)` not appear in the DPO loss?
(b) Use Experiment 1: what is each pair's loss when the policy equals the reference, whatever `beta`,
and why? (c) What does a larger `beta` change in what DPO allows the policy to do? What happens to a
pair the policy already orders correctly by a wide margin, under the sigmoid loss and under IPO?
"""),
        kit.written_answer("answer_dpo", """
(a) For each prompt the maximiser is pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x), with
Z(x) = sum_y pi_ref(y|x) exp(r(x, y) / beta). Taking logs, r(x, y) = beta log(pi*(y|x) / pi_ref(y|x))
+ beta log Z(x). Bradley-Terry uses only the difference of the chosen and the rejected rewards of the
same prompt; beta log Z(x) is the same in both and cancels, leaving a loss in the policy's and the
reference's log-probabilities alone.
(b) Every log-ratio is 0, so h = 0 and the sigmoid loss is -log sigmoid(0) = log 2 for every pair and
every beta (IPO gives (0 - 1/(2 beta))^2, hinge gives 1): the implicit rewards are all zero.
(c) beta is the weight of the KL constraint, and it multiplies h inside the sigmoid: a larger beta
saturates the loss with a smaller change of the log-ratios, so the policy stays closer to the
reference; a small beta lets it move far. Under the sigmoid loss a pair won by a wide margin has
gradient weight sigmoid(-beta h) -> 0: it stops contributing, but its margin can keep growing if other
pairs push the same way (the loss has no minimum in h). IPO's squared loss pulls h' back towards
1/(2 beta), so a pair won by more than that is pushed back: it regularises towards a target margin.
""", points=DPO_POINTS),
        kit.markdown("question_rl", f"""
## Written answer 2 ({kit.points(RL_POINTS)}, graded by hand)

(a) Use Experiment 2: explain the shape of each curve, and why PPO takes the minimum of the clipped
and the unclipped term on both signs of the advantage. (b) Use Experiment 3: which questions teach
GRPO nothing, and what does dividing by the group's standard deviation do to a question the model
gets right 7 times out of 8, compared with one it gets right 4 times? (c) A checker accepts any
answer that *contains* the expected word. What might a policy trained against it learn, and how do
the KL penalty and the choice of reward guard against it?
"""),
        kit.written_answer("answer_rl", """
(a) With A = +1 the objective grows with the ratio up to 1 + eps and is flat after it: raising a good
token's probability beyond a factor 1.2 earns nothing (and gets no gradient); below 1 - eps it keeps
the unclipped ratio, so undoing a mistake is not limited. With A = -1 it is flat below 1 - eps and
falls with the ratio above: pushing a bad token down is limited to 0.8, raising it is fully punished.
The minimum is the pessimistic bound: the policy can never gain from leaving the trust region, on
either sign, while every move that makes the objective worse still counts.
(b) Questions whose eight answers all got the same reward (all right or all wrong) have advantage 0
everywhere: no gradient. With 7/8 right the standard deviation is small (0.35), so the right answers
get +0.35 and the one wrong answer -2.47; with 4/8 right it is 0.53 and the answers get about +-0.94.
Dividing by the standard deviation gives rare outcomes large advantages and weighs easy and hard
questions by how unsure the model is (Dr. GRPO drops it for that reason).
(c) Answers that list several words ("class function", or a long list), so that the expected one is
always contained: the reward is maximal without knowing the answer (reward hacking). The KL penalty
keeps the policy close to the SFT model, which answers with one word, so such answers cost KL; but
with enough steps a large reward gain outweighs it. The real guard is a reward that checks what is
meant (an exact match, as Chapter 6's checkers do), and evaluation on held-out questions with a
different checker.
""", points=RL_POINTS),
    ]
