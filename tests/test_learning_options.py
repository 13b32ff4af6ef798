"""Issue 20's learning options: --optimizer (Lion, Prodigy, schedule-free AdamW), --max_grad_norm,
--min_snr_gamma, --noise_offset and --embedding_norm. Each is checked by its numbers (against the
formula or the reference package), resumes bit-exactly, and is refused in one line when bad."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_FLAGS
from test_checkpoint import TOKEN, assert_same_run, final_state, flags, interrupt_after, learned

from invokeai_ti.config import TrainingConfig
from invokeai_ti.files import checkpoint as ckpt
from invokeai_ti.train import optimizer as opt
from invokeai_ti.train.loss_weighting import min_snr_weights, offset_noise, weighted_mean
from invokeai_ti.train.optimizer_algorithms import Lion, Prodigy, ScheduleFreeAdamW

# 4 images x 2 repeats, batch 3, accumulation 2: 2 optimizer steps per epoch, the second short.
SHORT = ("--train_batch_size", "3", "--gradient_accumulation_steps", "2", "--repeats", "2",
         "--max_train_steps", "5", "--checkpointing_steps", "100",
         "--save_steps", "100")  # fmt: skip


# --- the algorithms, against their formulas and reference packages ------------------------------


def _gradients(steps: int, shape=(2, 8)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for _ in range(steps)]


def _drive(optimizer_class, start: torch.Tensor, grads: list[torch.Tensor],
           **kwargs) -> torch.Tensor:  # fmt: skip
    """Apply `grads` one per step; the gradient of step i is grads[i] + the current vectors (a
    quadratic pull to 0, so the step-size estimates have something to find)."""
    p = torch.nn.Parameter(start.clone())
    optimizer = optimizer_class([p], **kwargs)
    for g in grads:
        if hasattr(optimizer, "train"):  # the reference schedule-free package's mode switch
            optimizer.train()
        p.grad = g + p.detach()
        optimizer.step()
        optimizer.zero_grad()
    if hasattr(optimizer, "eval"):
        optimizer.eval()
    return p.detach()


def test_lion_moves_each_coordinate_by_the_sign_of_the_interpolated_momentum():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    lion = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.1, 0.0])
    lion.step()  # momentum 0: the update is sign(0.1 g), decay shrinks p by 1 - lr x wd first
    expected = torch.tensor([1.0, -2.0, 0.5]) * 0.95 - 0.1 * torch.tensor([1.0, -1.0, 0.0])
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(lion.state[p]["exp_avg"], 0.01 * torch.tensor([0.3, -0.1, 0.0]))
    p.grad = torch.tensor([-0.3, -0.1, 1.0])
    before = p.detach().clone()
    lion.step()  # sign(0.9 m + 0.1 g): [0.0027 - 0.03, -0.0009 - 0.01, 0.1]
    assert torch.allclose(p.detach(), before * 0.95 - 0.1 * torch.tensor([-1.0, -1.0, 1.0]))


def test_prodigy_matches_prodigyopt():
    prodigyopt = pytest.importorskip("prodigyopt")
    start, grads = torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), _gradients(30)
    kwargs = dict(lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ours = _drive(Prodigy, start, grads, **kwargs)
    theirs = _drive(prodigyopt.Prodigy, start, grads, **kwargs)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ours, start)  # d grew from 1e-6: the vectors moved


def test_schedule_free_adamw_matches_schedulefree():
    schedulefree = pytest.importorskip("schedulefree")
    start, grads = torch.randn(2, 8, generator=torch.Generator().manual_seed(2)), _gradients(30)
    kwargs = dict(lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    p = torch.nn.Parameter(start.clone())
    ours = ScheduleFreeAdamW([p], **kwargs)
    for g in grads:
        ours.to_train_point()
        p.grad = g + p.detach()
        ours.step()
        ours.zero_grad()
        ours.to_eval_point()
    theirs = _drive(schedulefree.AdamWScheduleFree, start, grads, warmup_steps=0, **kwargs)
    assert torch.allclose(p.detach(), theirs, rtol=1e-5, atol=1e-6)


def test_schedule_free_switching_is_a_copy_not_a_round_trip():
    """Validating or saving between steps must leave the run bit-identical."""
    p = torch.nn.Parameter(torch.randn(2, 8, generator=torch.Generator().manual_seed(3)))
    sf = ScheduleFreeAdamW([p], lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for g in _gradients(3):
        sf.to_train_point()
        p.grad = g
        sf.step()
        sf.to_eval_point()
    x = p.detach().clone()
    for _ in range(5):
        sf.to_train_point()
        sf.to_eval_point()
    assert torch.equal(p.detach(), x) and torch.equal(x, sf.state[p]["x"])


# --- the loss options ----------------------------------------------------------------------------


def test_min_snr_weights_follow_the_formula_for_epsilon_and_v():
    alphas_cumprod = torch.tensor([0.99, 0.9, 0.5, 0.01])
    t = torch.tensor([0, 1, 2, 3])
    snr = alphas_cumprod / (1 - alphas_cumprod)  # 99, 9, 1, 0.0101
    eps = min_snr_weights(alphas_cumprod, t, 5.0, "epsilon")
    v = min_snr_weights(alphas_cumprod, t, 5.0, "v_prediction")
    assert torch.allclose(eps, torch.tensor([5 / 99, 5 / 9, 1.0, 1.0]))
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert torch.allclose(v[2:], torch.tensor([0.5, snr[3] / (snr[3] + 1)]))
    assert min_snr_weights(alphas_cumprod, t, 0.0, "epsilon") is None
    zero_terminal = min_snr_weights(torch.tensor([0.5, 0.0]), torch.tensor([0, 1]), 5.0, "epsilon")
    assert torch.equal(zero_terminal, torch.tensor([1.0, 1.0]))  # the limit, not 0/0


def test_weighted_mean_is_the_plain_mean_when_off_and_weights_each_sample():
    per_sample = torch.tensor([1.0, 2.0, 4.0])
    assert torch.equal(weighted_mean(per_sample, None), per_sample.mean())
    weights = torch.tensor([1.0, 0.5, 0.0])
    assert torch.equal(weighted_mean(per_sample, weights), torch.tensor((1.0 + 1.0 + 0.0) / 3))


def test_noise_offset_adds_one_draw_per_sample_and_channel_and_none_when_off():
    noise = torch.zeros(2, 4, 3, 3)
    generator = torch.Generator().manual_seed(0)
    assert offset_noise(noise, 0.0, generator, 2, slice(0, 2)) is noise
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
    shifted = offset_noise(noise, 0.1, generator, 4, slice(2, 4))  # this process's half of 4
    expected = 0.1 * torch.randn((4, 4, 1, 1), generator=torch.Generator().manual_seed(0))[2:]
    assert torch.equal(shifted, noise + expected)


# --- the update: clipping and the norm -----------------------------------------------------------


def _fake_run(vectors: torch.nn.Parameter, optimizer, config: TrainingConfig) -> SimpleNamespace:
    return SimpleNamespace(config=config, optimizer=optimizer,
                           placeholders=[SimpleNamespace(vectors=vectors)],
                           scaler=torch.amp.GradScaler("cpu", enabled=False),
                           progress=SimpleNamespace(step=0), target_norms=None)  # fmt: skip


def test_max_grad_norm_clips_the_gradient_the_optimizer_sees(caplog):
    caplog.set_level(logging.DEBUG, logger="invokeai_ti")
    vectors = torch.nn.Parameter(torch.zeros(2, 4))
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(vectors.grad.norm().item())
            return super().step(closure)

    for max_norm, grad_scale, expected in ((0.5, 10.0, 0.5), (0.5, 0.01, None), (0.0, 10.0, None)):
        config = TrainingConfig(max_grad_norm=max_norm)
        run = _fake_run(vectors, Recording([vectors], lr=1.0), config)
        vectors.grad = torch.ones(2, 4) * grad_scale
        opt.update_vectors(run)
        unclipped = math.sqrt(8) * grad_scale
        assert seen[-1] == pytest.approx(expected if expected is not None else unclipped, rel=1e-6)
    clipped = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert clipped == ["step 0: gradient norm 28.28 clipped to 0.5."]  # --debug only, once


@pytest.mark.parametrize("name", ["adamw", "lion", "prodigy", "schedulefree_adamw"])
def test_keep_norm_holds_each_vector_at_the_target(name):
    vectors = torch.nn.Parameter(torch.randn(3, 8, generator=torch.Generator().manual_seed(4)))
    config = TrainingConfig(optimizer=name, embedding_norm="keep")
    lr = 1.0 if name == "prodigy" else 0.05
    run = _fake_run(vectors, opt.build_optimizer(config, [vectors], lr), config)
    run.target_norms = [0.4]
    for g in _gradients(4, (3, 8)):
        opt.to_train_point(run.optimizer)
        vectors.grad = g
        opt.update_vectors(run)
        run.optimizer.zero_grad()
        opt.to_eval_point(run.optimizer)
        assert torch.allclose(vectors.detach().norm(dim=-1), torch.full((3,), 0.4), atol=1e-6)


def test_the_keep_target_is_the_vocabularys_mean_norm():
    table = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])
    assert opt.vocabulary_norm(table) == pytest.approx((5 + 1 + 10) / 3)


# --- flags, plan, fingerprint --------------------------------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (("--max_grad_norm=-1",), "--max_grad_norm must be in [0, 1e+38], got -1.0: 0 turns clipping off."),
    (("--max_grad_norm", "nan"), "--max_grad_norm must be a finite number in [0, 1e+38], got nan."),
    (("--min_snr_gamma=-5",), "--min_snr_gamma must be in [0, 1e+38], got -5.0: 0 turns the weighting off"),
    (("--noise_offset", "1.5"), "--noise_offset must be in [0, 1], got 1.5: 0 turns it off"),
    (("--optimizer", "schedulefree_adamw", "--lr_scheduler", "cosine"),
     "--optimizer schedulefree_adamw replaces the decay of --lr_scheduler cosine"),
    (("--optimizer", "sgd"), "argument --optimizer: invalid choice: 'sgd'"),
    (("--embedding_norm", "fixed"), "argument --embedding_norm: invalid choice: 'fixed'"),
])  # fmt: skip
def test_bad_values_are_one_line_naming_the_flag(cli, tmp_path, argv, says):
    result = cli("--root_dir", tmp_path, "--placeholder_token", TOKEN, *argv)
    lines = result.err.strip().splitlines()
    assert result.code != 0 and len(lines) == 1, result.err
    assert lines[0].startswith("invokeai-ti: error: ") and says in lines[0]


def test_the_plan_names_every_learning_option(cli, root, tmp_path):
    out = tmp_path / "out"
    plain = cli(*flags(root, out, "--dry_run"))
    assert plain.code == 0, plain.err
    # The defaults: min-SNR 5 and the held norm (measured on the concept world, issue 20).
    assert ("Optimizer adamw; gradient clipping off; min-SNR weighting gamma 5; noise offset off; "
            "embedding norm kept at ") in plain.out  # fmt: skip
    chosen = cli(*flags(root, out, "--dry_run", "--optimizer", "lion", "--max_grad_norm", "1",
                        "--min_snr_gamma", "0", "--noise_offset", "0.05",
                        "--embedding_norm", "free"))  # fmt: skip
    assert chosen.code == 0, chosen.err
    assert ("Optimizer lion; gradient clipping at norm 1; min-SNR weighting off; noise offset "
            "0.05; embedding norm free.") in chosen.out  # fmt: skip


def test_a_checkpoint_from_before_optimizer_existed_resumes_as_adamw(tmp_path):
    current = ckpt.fingerprint(TrainingConfig(placeholder_token=TOKEN), [32], 1)
    old = {k: v for k, v in current.items() if k != "optimizer"}
    ckpt.check_fingerprint(tmp_path, old, current)  # no refusal
    with pytest.raises(Exception, match="--optimizer: checkpoint has 'adamw', this run has 'lion'"):
        ckpt.check_fingerprint(tmp_path, old, dict(current, optimizer="lion"))


# --- end to end: training, resume bit-exact ------------------------------------------------------

# Each optimizer with some loss options, so every new flag is in at least one resumed run.
CASES = {
    "lion": ("--optimizer", "lion", "--learning_rate", "1e-3", "--max_grad_norm", "0.05",
             "--min_snr_gamma", "5"),
    "prodigy": ("--optimizer", "prodigy", "--learning_rate", "1", "--no-scale_lr",
                "--noise_offset", "0.1", "--embedding_norm", "keep"),
    "schedulefree": ("--optimizer", "schedulefree_adamw", "--lr_scheduler", "constant_with_warmup",
                     "--lr_warmup_steps", "2", "--embedding_norm", "keep", "--min_snr_gamma", "1"),
    "adamw": ("--max_grad_norm", "0.01", "--noise_offset", "0.05", "--min_snr_gamma", "1",
              "--embedding_norm", "free"),
}  # fmt: skip


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_sd1, concept_images) -> dict[str, tuple]:
    """One uninterrupted 5-step run per case: {case: (root, output folder)}."""
    import shutil

    from invokeai_ti.front.cli import main
    from invokeai_ti.models.tiny import write_models_yaml

    root = tmp_path_factory.mktemp("learn") / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1}, default="stable-diffusion-1.5")
    shutil.copytree(concept_images, root / "text-inversion-training-data" / "psychedelic")
    found = {}
    for case, extra in CASES.items():
        out = root / f"reference-{case}"
        assert main(flags(root, out, *SHORT, *extra)) == 0
        found[case] = (root, out)
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_each_option_resumes_bit_exact(cli, references, monkeypatch, case):
    root, ref = references[case]
    out = root / f"stopped-{case}"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        assert cli(*flags(root, out, *SHORT, *CASES[case])).code == 130
    resumed = cli(*flags(root, out, *SHORT, *CASES[case], "--resume_from_checkpoint", "latest"))
    assert resumed.code == 0, resumed.err
    assert_same_run(out, ref)
    state, _ = final_state(ref)
    assert state["progress"]["step"] == 5 and all(map(math.isfinite, state["progress"]["losses"]))


@pytest.mark.parametrize("case", ["prodigy", "schedulefree", "lion"])  # lion: the default norm
def test_keep_norm_ends_at_the_vocabularys_mean_norm(references, tiny_sd1, case):
    from transformers import CLIPTextModel

    _, ref = references[case]
    table = CLIPTextModel.from_pretrained(tiny_sd1, subfolder="text_encoder").get_input_embeddings()
    target = table.weight.detach().float().norm(dim=-1).mean().item()
    assert learned(ref).norm().item() == pytest.approx(target, abs=1e-5)


def test_options_change_the_result_and_optimizers_keep_their_state(references):
    """Every case learned something different; Prodigy's d and the schedule-free average's
    weights are in the checkpoint (a resume that lost them would not be bit-exact above)."""
    results = [learned(out) for _, out in references.values()]
    assert all(not torch.equal(a, b) for i, a in enumerate(results) for b in results[i + 1 :])
    prodigy_group = final_state(references["prodigy"][1])[0]["optimizer"]["param_groups"][0]
    assert prodigy_group["k"] == 5 and prodigy_group["d"] > 1e-6
    sf_state, sf_tensors = final_state(references["schedulefree"][1])
    assert sf_state["optimizer"]["param_groups"][0]["k"] == 5
    # The exported embedding is the schedule-free average x, not the gradient point y.
    assert torch.equal(learned(references["schedulefree"][1]), sf_tensors["optimizer.0.x"][0])


def test_another_optimizer_cannot_resume_a_checkpoint(cli, references):
    root, ref = references["lion"]
    result = cli(*flags(root, ref, *SHORT, "--max_train_steps", "6", "--resume_from_checkpoint",
                        "latest"))  # fmt: skip
    assert result.code != 0
    assert "--optimizer: checkpoint has 'lion', this run has 'adamw'" in result.err


def test_changed_loss_options_apply_on_resume(cli, references, tmp_path):
    root, ref = references["adamw"]
    plan = cli(*flags(root, ref, *SHORT, "--max_train_steps", "6", "--resume_from_checkpoint",
                      "latest", "--dry_run"))  # fmt: skip
    assert plan.code == 0, plan.err
    assert ("changed: --max_grad_norm 0.01 -> 0.0; --min_snr_gamma 1.0 -> 5.0; --noise_offset "
            "0.05 -> 0.0; --embedding_norm free -> keep") in plan.out  # fmt: skip


def test_a_checkpoint_from_before_the_default_change_reports_it_on_resume():
    """A run recorded before --min_snr_gamma and --embedding_norm existed trained without them;
    its config reads back as 0 and free, so a resume with today's defaults lists both changes."""
    recorded = TrainingConfig(placeholder_token=TOKEN).to_dict()
    for name in ("min_snr_gamma", "embedding_norm"):
        del recorded[name]
    old = TrainingConfig.from_dict(recorded)
    assert (old.min_snr_gamma, old.embedding_norm) == (0.0, "free")
    assert (TrainingConfig().min_snr_gamma, TrainingConfig().embedding_norm) == (5.0, "keep")
    assert TrainingConfig.from_dict(TrainingConfig(min_snr_gamma=3).to_dict()).min_snr_gamma == 3


def test_min_snr_on_a_v_prediction_model_trains(cli, tmp_path, tiny_sd2, concept_images):
    import shutil

    from invokeai_ti.models.tiny import write_models_yaml

    root = tmp_path / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd2}, default="stable-diffusion-1.5")
    shutil.copytree(concept_images, root / "text-inversion-training-data" / "psychedelic")
    out = tmp_path / "out"
    result = cli(*flags(root, out, "--max_train_steps", "2", "--min_snr_gamma", "5"))
    assert result.code == 0, result.err
    assert torch.isfinite(torch.load(out / "learned_embeds.bin", weights_only=True)[TOKEN]).all()


def test_min_snr_and_noise_offset_change_the_loss_of_a_real_step(cli, root, tmp_path):
    """The same first step (seed, images, draws) three ways: min-SNR weights are at most 1, so
    its loss is lower (gamma 0.01: this step's timesteps, 676 and 963, have SNR about 0.1 and
    0.008, and a gamma above both would weight them 1); offset noise is another target, so its
    loss differs."""
    first = {}
    for name, extra in (("plain", ()), ("snr", ("--min_snr_gamma", "0.01")),
                        ("offset", ("--noise_offset", "0.5"))):  # fmt: skip
        out = tmp_path / name
        assert cli(*flags(root, out, "--max_train_steps", "1", *extra)).code == 0
        first[name] = final_state(out)[0]["progress"]["losses"][0]
    assert first["snr"] < first["plain"] and first["offset"] != first["plain"]


@pytest.mark.slow
def test_two_processes_with_every_option_train_like_one(cli, root, tmp_path):
    """The offset noise is drawn for the global batch and sliced, min-SNR weights each sample, the
    clip and Prodigy's estimate see the summed gradient: 2 processes at batch 1 = 1 at batch 2."""
    from test_multiprocess import _launch

    common = ["--root_dir", str(root), "--placeholder_token", TOKEN, *TINY_FLAGS,
              "--validation_steps", "0", "--no-copy", "--optimizer", "prodigy",
              "--learning_rate", "1", "--no-scale_lr",
              "--noise_offset", "0.1", "--min_snr_gamma", "5", "--max_grad_norm", "0.05",
              "--embedding_norm", "keep"]  # fmt: skip
    two = _launch(2, *common, "--train_batch_size", "1", "--output_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("Training on 2 processes") == 1
    assert cli(*common, "--train_batch_size", "2", "--output_dir", tmp_path / "one").code == 0
    losses_two, losses_one = (final_state(tmp_path / name)[0]["progress"]["losses"]
                              for name in ("two", "one"))  # fmt: skip
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    assert torch.allclose(learned(tmp_path / "two"), learned(tmp_path / "one"), atol=1e-6)
