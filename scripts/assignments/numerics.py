"""Chapter 0 assignment (numerics): what ``scripts/make_assignment.py`` puts before the test cells.

Instructor-only: the model answer below must never reach students (nbgrader strips it from the
notebook it writes; this file is not part of any release).
"""

ANSWER_POINTS = 2  # the written answer, graded by hand


def cells(kit) -> list:
    """Introduction, setup, the softmax-overflow experiment and the written question of Chapter 0."""
    module = kit.module
    return [
        kit.intro(
            "Chapter 0: numerically stable softmax",
            what="",
            contract="""
shapes, dtypes, masked entries, edge cases
""",
            written=(ANSWER_POINTS,),
            experiments="""
Run the experiment to see where the naive formulas break, and answer the question.
""",
        ),
        kit.helpers(),
        kit.setup(f"""
import torch
import torch.nn.functional as F

"""),
        kit.markdown("about_experiment", """
## Experiment: when does softmax overflow?

`exp` of a float32 above about 88.7 is `inf`, and `inf / inf` is NaN. Real logits get that large
(an untrained model, a temperature near 0, attention scores before scaling). The cell compares the
naive formula with your `stable_softmax` on random logits of growing scale, counts the rows that
come out NaN, and checks your answer against `torch.softmax`. An exercise you have not done yet is
reported, not fatal.
"""),
        kit.code("experiment", f"""
def naive_softmax(logits):
    exp = torch.exp(logits)
    return exp / exp.sum(dim=-1, keepdim=True)


def nan_rows(probs):
    return float(torch.isnan(probs).any(dim=-1).float().mean())


gen = torch.Generator().manual_seed(0)
scales = [1, 10, 30, 100, 300, 1000, 3000]
naive_rate, yours_rate = [], []
print(f"{{'scale':>6}} {{'naive NaN rows':>15}} {{'yours NaN rows':>15}} {{'max |yours - torch|':>20}}")
for scale in scales:
    logits = torch.randn(2000, 64, generator=gen) * scale
    naive_rate.append(nan_rows(naive_softmax(logits)))
    yours = attempt("0.1 stable_softmax", {module}.stable_softmax, logits)
    if yours is None:
        break
    yours_rate.append(nan_rows(yours))
    gap = (yours - torch.softmax(logits, dim=-1)).abs().max().item()
    print(f"{{scale:>6}} {{naive_rate[-1]:>15.1%}} {{yours_rate[-1]:>15.1%}} {{gap:>20.2e}}")

if plt is not None and yours_rate:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.semilogx(scales[:len(naive_rate)], naive_rate, "o-", label="naive exp / sum")
    ax.semilogx(scales[:len(yours_rate)], yours_rate, "s--", label="your stable_softmax")
    ax.set_xlabel("logit scale (std of the logits)")
    ax.set_ylabel("fraction of NaN rows")
    ax.legend()
    plt.show()

logits = torch.randn(4, 16, 100, generator=gen) * 5          # (batch, seq, vocab)
targets = torch.randint(0, 100, (4, 16), generator=gen)       # (batch, seq)
targets[:, -3:] = -100                                        # padding: ignored
loss = attempt("0.4 cross_entropy", {module}.cross_entropy, logits, targets)
if loss is not None:
    expected = F.cross_entropy(logits.reshape(-1, 100), targets.reshape(-1))
    print(f"cross_entropy: yours {{loss.item():.6f}}, torch {{expected.item():.6f}}")
"""),
        kit.markdown("question_masked_rows", f"""
## Written answer ({kit.points(ANSWER_POINTS)}, graded by hand)

`torch.softmax` returns NaN for a row whose logits are all `-inf`; this course's `stable_softmax`
returns zeros there. Where in a language model do fully masked rows occur, why is NaN harmful there,
and when could silently returning zeros hide a bug instead? Answer in a few sentences.
"""),
        kit.written_answer("answer_masked_rows", """
Fully masked rows appear in attention when a query may attend to no key: left-padding positions in a
batch with a padding mask, or a causal mask combined with a padding mask at the first positions.
A NaN there does not stay put: it spreads through the weighted sum of values, the next layers and
the loss, and one NaN gradient corrupts every parameter in the optimiser step. Zeros give those
positions a zero attention output, which is harmless when the positions are padding whose outputs
are ignored (their loss is masked too). But zeros also hide mistakes: a mask built the wrong way
(inverted, or shifted by one) that blanks out real tokens' rows produces plausible numbers instead
of a loud NaN, so such a bug shows up only as a worse loss. A check that real (non-padding) rows
are never fully masked catches it.
""", points=ANSWER_POINTS),
    ]
