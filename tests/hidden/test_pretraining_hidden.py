"""Chapter 5 graded tests (hidden: grading only, not in the student handout)."""

import copy
import math

import pytest
import torch
from torch import nn

from grading.expect import assert_close
from tests.test_pretraining import (F64, NO_CLIPPING, SETTINGS, assert_history, check_groups, collator_masking,
                                    datasets_split, group_texts, hf_decayed, hf_labels, hf_schedule, micro_batches,
                                    mlm_ids, next_token_ce, random_docs, sampler_order, steps_with_prompts,
                                    tiny_course_lm, tiny_gpt2, tiny_llama, token_batch, whole_step)
from tests.test_pretraining import (adamw_problem, assert_same_data, assert_same_run, check_clipping,
                                    checkpoint_bytes, clip_problem, expected_checkpoint, torch_adamw, torch_clipping)


# -- 5.1 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.1")
def test_hidden_pack_blocks_on_the_course_corpus(student):
    from course_lib.corpus import load_corpus
    from course_lib.pretraining import course_tokenizer, tokenize_documents

    tokenizer = course_tokenizer()
    docs = tokenize_documents(tokenizer, load_corpus("validation")[:6])
    eos = tokenizer.eos_token_id
    got = student.pack_blocks(docs, 64, eos)
    assert_close(got, group_texts(docs, 64, eos), what="pack_blocks of 6 course documents, block_size=64")
    assert int((got == eos).sum()) <= len(docs)


@pytest.mark.exercise("5.1")
@pytest.mark.parametrize("seed, block_size, eos", [(20, 1, 0), (21, 7, 49), (22, 64, 3), (23, 13, 1)])
def test_hidden_pack_blocks_random_documents(student, seed, block_size, eos):
    docs = random_docs(seed, 15, 30)
    assert_close(student.pack_blocks(docs, block_size, eos), group_texts(docs, block_size, eos),
                 what=f"pack_blocks(block_size={block_size}, eos={eos})")


@pytest.mark.exercise("5.1")
def test_hidden_pack_blocks_exact_fit_and_no_documents(student):
    assert_close(student.pack_blocks([[4, 5, 6], [7, 8, 9]], 4, 1), torch.tensor([[4, 5, 6, 1], [7, 8, 9, 1]]),
                 what="pack_blocks where the stream fills exactly two blocks")
    assert_close(student.pack_blocks([], 4, 1), torch.zeros(0, 4, dtype=torch.long), what="pack_blocks([])")
    assert_close(student.pack_blocks([[], []], 4, 1), torch.zeros(0, 4, dtype=torch.long),
                 what="pack_blocks of empty documents")


# -- 5.2 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.2")
@pytest.mark.parametrize("n_documents, fraction, seed", [(2, 0.5, 0), (100, 0.01, 9), (57, 0.25, 2024), (1000, 0.1, 5)])
def test_hidden_split_documents(student, n_documents, fraction, seed):
    assert tuple(student.split_documents(n_documents, fraction, seed)) == tuple(datasets_split(n_documents, fraction, seed)), \
        f"split_documents({n_documents}, {fraction}, seed={seed}) differs from datasets' train_test_split"


# -- 5.3 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.3")
@pytest.mark.parametrize("n_blocks, batch_size, seed", [(12, 12, 4), (9, 1, 5), (1000, 33, 6), (3, 5, 7)])
def test_hidden_batch_order(student, n_blocks, batch_size, seed):
    assert student.batch_order(n_blocks, batch_size, seed) == sampler_order(n_blocks, batch_size, seed), \
        f"batch_order({n_blocks}, {batch_size}, seed={seed})"


# -- 5.4 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.4")
def test_hidden_causal_lm_loss_left_padding_gpt2(student, device):
    model = tiny_gpt2(device, seed=30).eval()
    input_ids, mask = token_batch(3, 11, device, seed=31, lengths=[11, 4, 7], left=True)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, labels=hf_labels(input_ids, mask))
    assert_close(student.causal_lm_loss(out.logits, input_ids, mask), out.loss, what="loss with left padding vs GPT-2",
                 rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("5.4")
@pytest.mark.parametrize("seed, shape", [(32, (1, 2, 3)), (33, (4, 17, 50)), (34, (2, 9, 1000))])
def test_hidden_causal_lm_loss_random_float64_with_custom_ignore_index(student, device, seed, shape):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen, dtype=F64) * 3).to(device)
    labels = torch.randint(0, shape[-1], shape[:2], generator=gen)
    labels[torch.rand(shape[:2], generator=gen) < 0.3] = -1
    labels = labels.to(device)
    expected = next_token_ce(logits, labels.masked_fill(labels == -1, -100))
    got = student.causal_lm_loss(logits, labels, ignore_index=-1)
    if torch.isnan(expected):
        assert torch.isnan(got), "no counted target: the mean is NaN"
    else:
        assert_close(got, expected, what=f"causal_lm_loss(ignore_index=-1) of shape {shape}")


@pytest.mark.exercise("5.4")
def test_hidden_causal_lm_loss_with_labels_and_padding_together(student, device):
    model = tiny_llama(device, seed=35).eval()
    input_ids, mask = token_batch(3, 10, device, seed=36, lengths=[10, 6, 3])
    labels = input_ids.clone()
    labels[:, :4] = -100                               # a prompt that is not scored
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels.masked_fill(mask == 0, -100))
    assert_close(student.causal_lm_loss(out.logits, labels, mask), out.loss, rtol=1e-5, atol=1e-6,
                 what="causal_lm_loss with -100 labels and padding in one batch (one row has no target left)")


# -- 5.5 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.5")
@pytest.mark.parametrize("seed, probabilities", [(40, {"mask_replace_prob": 0.0, "random_replace_prob": 1.0}),
                                                 (41, {"mlm_probability": 1.0}),
                                                 (42, {"mlm_probability": 0.0}),
                                                 (43, {"mask_replace_prob": 0.5, "random_replace_prob": 0.5})])
def test_hidden_mask_tokens_edge_probabilities(student, seed, probabilities):
    ids = mlm_ids(5, 30, seed)
    expected = collator_masking(ids, seed, **probabilities)
    got = student.mask_tokens(ids, vocab_size=40, mask_token_id=3, special_token_ids=[0, 1, 2], seed=seed, **probabilities)
    assert_close(got[1], expected[1], what=f"labels with {probabilities}")
    assert_close(got[0], expected[0], what=f"masked input_ids with {probabilities}")


@pytest.mark.exercise("5.5")
def test_hidden_mask_tokens_one_dimensional_input(student, device):
    ids = mlm_ids(1, 64, 44)[0]
    expected = collator_masking(ids, 44)
    got = student.mask_tokens(ids.to(device), vocab_size=40, mask_token_id=3, special_token_ids=[0, 1, 2], seed=44)
    assert_close(got[0], expected[0].to(device), what="masked input_ids of a (seq,) input")
    assert_close(got[1], expected[1].to(device), what="labels of a (seq,) input")


# -- 5.6 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.6")
@pytest.mark.parametrize("total_steps, warmup_steps, min_lr_ratio, peak", [(1, 0, 0.0, 1.0), (1, 1, 0.0, 0.5),
                                                                           (1000, 37, 0.05, 6e-4), (13, 0, 0.5, 2.0)])
def test_hidden_lr_at(student, total_steps, warmup_steps, min_lr_ratio, peak):
    got = [student.lr_at(s, peak_lr=peak, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)
           for s in range(total_steps + 1)]
    expected = [peak * r for r in hf_schedule(total_steps, warmup_steps, min_lr_ratio)]
    assert_close(torch.tensor(got, dtype=F64), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-15,
                 what=f"lr_at for total {total_steps}, warmup {warmup_steps}, min ratio {min_lr_ratio}")
    assert isinstance(got[0], float), "lr_at returns a float"


# -- 5.7 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.7")
@pytest.mark.parametrize("kind", ["course_gpt2", "course_untied", "gpt2_untied", "bert"])
def test_hidden_weight_decay_groups(student, kind):
    if kind == "course_gpt2":
        model = tiny_course_lm("cpu", **{"norm_type": "layernorm", "hidden_act": "gelu_tanh", "attention_bias": True,
                                         "mlp_bias": True, "position_embedding_type": "learned"})
    elif kind == "course_untied":
        model = tiny_course_lm("cpu", tie_word_embeddings=False)
    elif kind == "gpt2_untied":
        model = tiny_gpt2("cpu", tie_word_embeddings=False)
    else:
        from transformers import BertConfig, BertForMaskedLM

        model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=32, max_position_embeddings=32))
    check_groups(student.weight_decay_groups(model, 0.05), model, 0.05, f"weight_decay_groups({kind})")


def reference_training(model, steps, settings, accumulate=False, dtype=F64):
    """The training loop written out, on a copy of ``model`` in ``dtype``: one big batch per step
    (all micro-batches together), the loss of ``F.cross_entropy``, AdamW on Hugging Face's decayed
    parameters, ``clip_grad_norm_`` and Hugging Face's cosine schedule. Returns ``train_steps``'s
    history. ``accumulate`` runs the micro-batches one by one instead (the same gradient; in bf16
    the same rounding as train_steps). Hidden: it is an answer to exercise 5.8."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    model = copy.deepcopy(model).to(dtype)
    decayed = set(hf_decayed(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decayed], "weight_decay": settings["weight_decay"]},
              {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=settings["lr"], betas=tuple(settings["betas"]), eps=settings["eps"])
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, settings["warmup_steps"],
                                                            settings["total_steps"],
                                                            min_lr_rate=settings["min_lr_ratio"])
    history = {"loss": [], "grad_norm": [], "lr": [], "tokens": []}
    model.train()
    for micro_batches in steps:
        batch = whole_step(micro_batches)
        input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
        n_targets = ((labels[:, 1:] != -100) & (mask[:, 1:] == 1)).sum()
        loss = 0.0
        for part in (micro_batches if accumulate else [{"input_ids": input_ids, "labels": labels,
                                                         "attention_mask": mask}]):
            part_mask = part.get("attention_mask", torch.ones_like(part["input_ids"]))
            with torch.autocast(input_ids.device.type, dtype=torch.bfloat16,
                                enabled=settings["mixed_precision"] == "bf16"):
                logits = model(input_ids=part["input_ids"], attention_mask=part_mask).logits
            part_loss = next_token_ce(logits, part.get("labels", part["input_ids"]), part_mask, "sum") / n_targets
            part_loss.backward()
            loss += part_loss.item()
        max_norm = settings["max_grad_norm"] if settings["max_grad_norm"] is not None else math.inf
        history["grad_norm"].append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item())
        history["lr"].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        history["loss"].append(loss)
        history["tokens"].append(int(mask.sum()))
    return history


# -- 5.8 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.8")
@pytest.mark.parametrize("family, n_micro, padded", [("llama", 1, False), ("llama", 2, False), ("course", 3, False),
                                                     ("llama", 2, True)])
def test_hidden_train_steps_matches_the_loop_written_out(student, device, family, n_micro, padded):
    model = (tiny_llama if family == "llama" else tiny_course_lm)(device, seed=1 + padded)
    steps = micro_batches(4, n_micro, 2, 12, device, seed=7, padded=padded)
    expected = reference_training(model, steps, SETTINGS)
    got = student.train_steps(model, steps, SETTINGS)
    assert_history(got, expected, what=f"train_steps({family} model, 4 steps of {n_micro} micro-batch(es), "
                                       f"padded={padded})", student=student)


@pytest.mark.exercise("5.8")
def test_hidden_train_steps_without_clipping_and_with_labels(student, device):
    model = tiny_gpt2(device, seed=3)
    steps, settings = steps_with_prompts(device), SETTINGS | NO_CLIPPING
    expected = reference_training(model, steps, settings)
    got = student.train_steps(model, steps, settings)
    assert_history(got, expected, what="train_steps with max_grad_norm=None and labels with -100", student=student)


@pytest.mark.exercise("5.8")
def test_hidden_train_steps_in_bf16_autocast(student, device):
    model = tiny_llama(device, seed=4)
    steps = micro_batches(3, 2, 2, 12, device, seed=10)
    settings = SETTINGS | {"mixed_precision": "bf16"}
    expected = reference_training(model, steps, settings, accumulate=True, dtype=torch.float32)
    got = student.train_steps(model, steps, settings)
    assert_history(got, expected, what="train_steps with mixed_precision='bf16'", rtol=1e-5, student=student)


@pytest.mark.exercise("5.8")
def test_hidden_train_steps_gpt2_five_steps_no_warmup(student, device):
    model = tiny_gpt2(device, seed=50)
    steps = micro_batches(5, 2, 3, 9, device, seed=51, padded=True)
    settings = SETTINGS | {"warmup_steps": 0, "total_steps": 5, "weight_decay": 0.3, "betas": [0.8, 0.99]}
    expected = reference_training(model, steps, settings)
    assert_history(student.train_steps(model, steps, settings), expected,
                   what="train_steps(GPT-2, 5 steps, no warmup, betas (0.8, 0.99))", student=student)


@pytest.mark.exercise("5.8")
def test_hidden_train_steps_course_model_gpt2_style_one_step(student, device):
    model = tiny_course_lm(device, seed=52, norm_type="layernorm", hidden_act="gelu_tanh",
                           attention_bias=True, mlp_bias=True, position_embedding_type="learned")
    steps = micro_batches(2, 4, 1, 16, device, seed=53)
    settings = SETTINGS | {"total_steps": 2, "max_grad_norm": 0.1}
    expected = reference_training(model, steps, settings)
    assert_history(student.train_steps(model, steps, settings), expected,
                   what="train_steps(course model, GPT-2 style, 4 micro-batches of 1)", student=student)


@pytest.mark.exercise("5.8")
def test_hidden_train_steps_large_clip_changes_nothing(student, device):
    model = tiny_llama(device, seed=54, tie=False)
    steps = micro_batches(3, 1, 4, 10, device, seed=55)
    settings = SETTINGS | {"max_grad_norm": 1e6}
    expected = reference_training(model, steps, settings)
    assert_history(student.train_steps(model, steps, settings), expected,
                   what="train_steps with an untied Llama and a clip threshold that is never reached", student=student)


# -- 5.9 --------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.9")
@pytest.mark.parametrize("tps, fpt, peak, n", [(1234.5, 7_000_000, 3.1e11, 1), (2.5e6, 1_500_000_000, 989e12, 4),
                                               (0.0, 10, 1.0, 2)])
def test_hidden_mfu(student, tps, fpt, peak, n):
    assert math.isclose(student.mfu(tps, fpt, peak, n), 3 * fpt * tps / (peak * n), rel_tol=1e-12, abs_tol=1e-15), \
        f"mfu({tps}, {fpt}, {peak}, n_devices={n})"


# == 5.10-5.11 ===========================================================================================
# -- 5.10 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.10")
@pytest.mark.parametrize("seed", [30, 31, 32])
def test_hidden_adamw_random_hyperparameters_twenty_steps(student, device, seed):
    gen = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return low + (high - low) * torch.rand((), generator=gen, dtype=F64).item()

    params, grads = adamw_problem(seed, n_steps=20, device=device, scales=(draw(0.1, 10), draw(1e-5, 1e-3), 1.0))
    groups = [{"params": [0], "lr": draw(1e-3, 5e-2), "betas": (draw(0.5, 0.99), draw(0.9, 0.9999)),
               "eps": draw(1e-9, 1e-4), "weight_decay": draw(0.0, 0.3)},
              {"params": [2, 1], "lr": draw(1e-3, 5e-2), "betas": (draw(0.5, 0.99), draw(0.9, 0.9999)),
               "weight_decay": 0.0, "amsgrad": seed % 2 == 0}]
    assert_same_run(student.adamw_steps(params, grads, groups), torch_adamw(params, grads, groups),
                    what=f"AdamW, 20 steps, random hyperparameters (seed {seed})")


@pytest.mark.exercise("5.10")
def test_hidden_adamw_betas_zero_and_zero_learning_rate(student, device):
    params, grads = adamw_problem(33, n_steps=4, device=device)
    groups = [{"params": [0], "lr": 1e-2, "betas": (0.0, 0.0), "weight_decay": 0.2},
              {"params": [1], "lr": 0.0, "weight_decay": 0.5},
              {"params": [2], "lr": 1e-1, "betas": (0.99, 0.999), "weight_decay": 1.0}]
    got = student.adamw_steps(params, grads, groups)
    assert_same_run(got, torch_adamw(params, grads, groups), what="AdamW with betas (0, 0), lr 0 and weight_decay 1")
    assert torch.equal(got["params"][-1][1], params[1]), "a group with lr 0 must not move (its decay is lr * weight_decay)"


@pytest.mark.exercise("5.10")
def test_hidden_adamw_scalar_and_one_element_parameters_float32(student, device):
    gen = torch.Generator().manual_seed(34)
    params = [torch.randn((), generator=gen).to(device), torch.randn(1, generator=gen).to(device),
              torch.randn(3, 1, 2, generator=gen).to(device)]
    grads = [[torch.randn(p.shape, generator=gen).to(device) for p in params] for _ in range(6)]
    groups = [{"params": [0, 1, 2], "lr": 5e-3, "weight_decay": 0.05}]
    assert_same_run(student.adamw_steps(params, grads, groups), torch_adamw(params, grads, groups),
                    what="AdamW on a 0-dim, a one-element and a (3, 1, 2) parameter, float32")


@pytest.mark.exercise("5.10")
def test_hidden_adamw_amsgrad_maximize_missing_gradients_and_resume_together(student, device):
    params, grads = adamw_problem(35, n_steps=8, device=device, shrink=0.5)
    grads[2][1] = grads[5][0] = grads[6][0] = None
    groups = [{"params": [0, 1], "lr": 2e-2, "betas": (0.9, 0.6), "weight_decay": 0.1, "amsgrad": True,
               "maximize": True},
              {"params": [2], "lr": 1e-2, "weight_decay": 0.0, "amsgrad": True}]
    lrs = [[2e-2 * (1 - t / 8), 1e-2] for t in range(8)]
    expected = torch_adamw(params, grads, groups, lrs=lrs, resume_after=4, closure=True)
    got = student.adamw_steps(params, grads, groups, lrs=lrs, resume_after=4, closure=True)
    assert_same_run(got, expected, what="AdamW with amsgrad, maximize, missing gradients, a schedule, a closure and a "
                                        "resume after step 4")
    for key, want in expected["state"]["state"].items():
        assert_close(got["state"]["state"][key]["max_exp_avg_sq"], want["max_exp_avg_sq"],
                     what=f"state of parameter {key}: max_exp_avg_sq")


# -- 5.11 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.11")
@pytest.mark.parametrize("seed, norm_type, max_norm", [(40, 1.5, 0.3), (41, 2.0, 0.0), (42, math.inf, 1e-3),
                                                       (43, 4.0, 5.0)])
def test_hidden_clip_grad_norm_more_norms_and_limits(student, device, seed, norm_type, max_norm):
    grads = clip_problem(seed, shapes=((3,), (), (8, 8), (1, 1, 5), (100,)), device=device)
    check_clipping(student.clipped_gradients(grads, max_norm, norm_type), torch_clipping(grads, max_norm, norm_type),
                   what=f"clip_grad_norm_(max_norm={max_norm}, norm_type={norm_type}) of 5 gradients, one 0-dim",
                   originals=grads)


@pytest.mark.exercise("5.11")
def test_hidden_clip_grad_norm_float32_many_tensors_some_missing(student, device):
    grads = clip_problem(44, shapes=[(i + 1, 3) for i in range(12)], dtype=torch.float32, scale=2.0, device=device)
    grads = [None if i % 4 == 1 else g for i, g in enumerate(grads)]
    check_clipping(student.clipped_gradients(grads, 1.0), torch_clipping(grads, 1.0),
                   what="clip_grad_norm_ of 12 float32 gradients, 3 of them missing", originals=grads)


@pytest.mark.exercise("5.11")
def test_hidden_clip_grad_norm_infinite_norm_with_inf_norm_type(student, device):
    grads = clip_problem(45, device=device)
    grads[0][0, 0] = -float("inf")
    check_clipping(student.clipped_gradients(grads, 1.0, math.inf), torch_clipping(grads, 1.0, math.inf),
                   what="clip_grad_norm_(norm_type=inf) of gradients holding -inf")
    try:
        student.clipped_gradients(grads, 1.0, math.inf, True)
    except RuntimeError:
        pass
    else:
        raise AssertionError("clip_grad_norm_(norm_type=inf, error_if_nonfinite=True) with an infinite norm must raise "
                             "RuntimeError")


# -- 5.12-5.13 -------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.12")
@pytest.mark.parametrize("seed, updates, step", [(20, 0, 0), (21, 7, 100)])
def test_hidden_save_checkpoint_other_runs(student, seed, updates, step):
    history = {"loss": [float(i) for i in range(step % 5)], "eval_step": [0]}
    content = student.saved_checkpoint(seed, updates, step, history)["content"]
    want = expected_checkpoint(seed, updates, step, history)
    assert_same_data(content, want, "checkpoint", f"save_checkpoint after {updates} updates, step {step}")


@pytest.mark.exercise("5.13")
@pytest.mark.parametrize("seed, updates", [(22, 1), (23, 6)])
def test_hidden_load_checkpoint_other_runs(student, seed, updates):
    got = student.resumed_from_checkpoint(checkpoint_bytes(seed, updates, updates, {"loss": [1.5] * updates}),
                                          seed, updates)
    assert got["returned"] == [updates, {"loss": [1.5] * updates}]
    assert got["lr"]["resumed"] == got["lr"]["uninterrupted"]
    assert all(torch.equal(a, b) for a, b in zip(got["params"]["resumed"], got["params"]["uninterrupted"])), \
        f"the run resumed after {updates} updates does not continue exactly"
    assert torch.equal(got["draws"]["resumed"]["torch"], got["draws"]["uninterrupted"]["torch"])
    assert got["draws"]["resumed"]["python"] == got["draws"]["uninterrupted"]["python"]
