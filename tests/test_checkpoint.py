"""Checkpoints you can trust: bit-exact resume (batch > 1, accumulation, repeats, mid-epoch),
resume guards, size, file modes, no unpickling, total limit, Ctrl-C/SIGTERM, SIGKILL at random."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS
from safetensors.torch import load_file

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import ResumeError, UserError
from invokeai_ti.files import atomic
from invokeai_ti.files import checkpoint as ckpt
from invokeai_ti.train import loop
from invokeai_ti.train.setup import setup

TOKEN = "<psychedelic>"
# 4 images x 2 repeats = 8 samples; batch 3 -> 3 micro-batches per epoch (the last one short);
# accumulation 2 -> 2 optimizer steps per epoch, the second of one micro-batch. A linear schedule
# with warmup makes the lr depend on the step, so a wrong lr position changes the vectors.
EXACT = ("--train_batch_size", "3", "--gradient_accumulation_steps", "2", "--repeats", "2",
         "--max_train_steps", "5", "--lr_scheduler", "linear", "--lr_warmup_steps", "1",
         "--checkpointing_steps", "100", "--save_steps", "100", "--validation_steps", "0")  # fmt: skip


def _config(*argv: str) -> TrainingConfig:
    from invokeai_ti.front.cli import parse_config
    from invokeai_ti.invokeai.root import apply_root_defaults

    config, _ = parse_config(argv)
    config.validate()
    return apply_root_defaults(config)


def flags(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--root_dir", str(root), "--placeholder_token", TOKEN, "--output_dir", str(out),
            *TINY_FLAGS, "--validation_steps", "0", *extra]  # fmt: skip


def learned(out: Path) -> torch.Tensor:
    return torch.load(out / "learned_embeds.bin", weights_only=True)[TOKEN]


def final_state(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The newest checkpoint's JSON and tensors (progress, lr, losses, vectors, AdamW moments)."""
    folder = ckpt.list_checkpoints(out)[-1]
    return json.loads((folder / ckpt.STATE_FILE).read_text()), load_file(folder / ckpt.TENSORS_FILE)


def reference_run(root: Path, *extra: str) -> Path:
    """The uninterrupted 5-step run (EXACT flags) that a stopped and resumed one must equal."""
    from invokeai_ti.front.cli import main

    out = root / "reference"
    assert main(flags(root, out, *EXACT, *extra)) == 0
    assert final_state(out)[0]["progress"]["step"] == 5
    return out


def interrupt_after(monkeypatch, step: int, signum: int = signal.SIGINT) -> None:
    """Deliver a real signal to this process right after optimizer step `step`."""
    report_step = loop.report_step

    def report_then_signal(run, reporter):
        report_step(run, reporter)
        if run.progress.step == step:
            signal.raise_signal(signum)

    monkeypatch.setattr(loop, "report_step", report_then_signal)


def assert_same_run(out: Path, reference: Path) -> None:
    assert torch.equal(learned(out), learned(reference))
    state, tensors = final_state(out)
    ref_state, ref_tensors = final_state(reference)
    assert state["progress"] == ref_state["progress"]  # step, epoch, position, every loss
    assert state["optimizer"]["param_groups"] == ref_state["optimizer"]["param_groups"]  # lr
    non_rng = [k for k in ref_tensors if not k.startswith("rng.")]
    assert sorted(non_rng) == sorted(k for k in tensors if not k.startswith("rng."))
    assert all(torch.equal(tensors[k], ref_tensors[k]) for k in non_rng)  # vectors, exp_avg(_sq)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_sd1, concept_images) -> tuple[Path, Path]:
    """One uninterrupted run of EXACT, shared by the resume cases: (root, output folder)."""
    import shutil

    from invokeai_ti.models.tiny import write_models_yaml

    root = tmp_path_factory.mktemp("exact") / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1}, default="stable-diffusion-1.5")
    shutil.copytree(concept_images, root / "text-inversion-training-data" / "psychedelic")
    return root, reference_run(root)


# k=3 stops mid-epoch (resumed by `latest`); k=1 mid-epoch and k=2 at an epoch end (by path) are
# the slow extra cases.
@pytest.mark.parametrize("k, how", [(3, "latest"), pytest.param(1, "latest", marks=pytest.mark.slow),
                                    pytest.param(2, "path", marks=pytest.mark.slow)])  # fmt: skip
def test_interrupted_runs_resume_bit_exact(cli, reference, monkeypatch, k, how):
    root, ref = reference
    out = root / f"stopped-{k}"
    with monkeypatch.context() as patch:
        interrupt_after(patch, k)
        stopped = cli(*flags(root, out, *EXACT))
    folder = out / f"checkpoint-{k}"
    assert stopped.code == 130, stopped.err
    assert f"Stopped at step {k}: checkpoint saved in {folder}" in stopped.out
    state = json.loads((folder / "state.json").read_text())
    assert state["progress"]["step"] == k and len(state["progress"]["losses"]) == k
    # The stop also wrote the current embedding, equal to the checkpoint's vectors.
    step_file = torch.load(out / f"learned_embeds-steps-{k}.bin", weights_only=True)[TOKEN]
    assert torch.equal(step_file, load_file(folder / ckpt.TENSORS_FILE)["vectors.0"][0])
    assert not (out / "learned_embeds.bin").exists()
    resume = "latest" if how == "latest" else str(folder)
    resumed = cli(*flags(root, out, *EXACT, "--resume_from_checkpoint", resume))
    assert resumed.code == 0, resumed.err
    assert "Trained 5 steps" in resumed.out
    assert_same_run(out, ref)


def test_sigterm_in_the_loop_saves_and_exits_143(cli, root, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 2, signal.SIGTERM)
    result = cli(*flags(root, tmp_path / "out", "--max_train_steps", "4"))
    assert result.code == 143, result.err
    assert (tmp_path / "out" / "checkpoint-2" / ckpt.STATE_FILE).is_file()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_resume_guards(cli, root, tmp_path, tiny_sd1, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    first = cli(*flags(root, out, "--max_train_steps", "2", "--lr_scheduler", "linear"))
    assert first.code == 0, first.err
    resume = ("--max_train_steps", "2", "--lr_scheduler", "linear", "--resume_from_checkpoint",
              "latest")  # fmt: skip
    for argv, difference in [
        (("--num_vectors", "2"), "--num_vectors: checkpoint has 1, this run has 2"),
        (("--resolution", "32"), "--resolution: checkpoint has 64, this run has 32"),
        (("--placeholder_token", "<other>"),
         "--placeholder_token: checkpoint has '<psychedelic>', this run has '<other>'"),
        (("--model", str(tiny_sd1)), f"--model: checkpoint has 'stable-diffusion-1.5', this run "
                                     f"has '{tiny_sd1}'"),
    ]:  # fmt: skip
        result = cli(*flags(root, out, *resume, *argv))
        lines = result.err.strip().splitlines()
        assert result.code == 2 and difference in lines[-1], result.err
        assert lines[-1].startswith(f"invokeai-ti: error: cannot resume from {out}/checkpoint-2")
    # Already at --max_train_steps: says so and writes the final outputs again.
    (out / "learned_embeds.bin").unlink()
    again = cli(*flags(root, out, *resume))
    assert again.code == 0 and "Already trained 2 of 2 steps; writing the outputs." in again.out
    assert (out / "learned_embeds.bin").is_file() and "Trained 2 steps" in again.out
    # A larger --max_train_steps extends the run; the schedule is the one for the new total.
    caplog.clear()
    run = setup(_config(*flags(root, out, "--max_train_steps", "4", "--lr_scheduler",
                                        "linear", "--resume_from_checkpoint", "latest")))  # fmt: skip
    assert run.progress.step == 2 and run.total_steps == 4
    assert run.schedule.get_last_lr()[0] == pytest.approx(run.learning_rate * 2 / 4)
    said = [r.getMessage() for r in caplog.records if "Extending" in r.getMessage()]
    assert said == ["Extending the run from 2 to 4 steps; the lr schedule is recomputed for the "
                    "new total."]  # fmt: skip
    # `latest` with no checkpoint: a new run, said in one info line.
    caplog.clear()
    fresh = setup(_config(*flags(root, tmp_path / "empty", "--resume_from_checkpoint",
                                          "latest", "--dry_run")))  # fmt: skip
    assert fresh.progress.step == 0 and fresh.resumed_from is None
    said = [r.getMessage() for r in caplog.records if "No checkpoint" in r.getMessage()]
    assert said == [f"No checkpoint in {tmp_path / 'empty'} yet: starting a new run."]


def test_a_resume_applies_changed_flags_and_keeps_the_moments(cli, root, tmp_path, caplog):
    """Issue 21: a new learning rate, Adam setting, batch size or repeat count applies from the
    resumed step on (the dry-run plan and a log line say so); the AdamW moments are kept, and a
    data position the new batch size has passed ends the epoch instead of making an empty step."""
    out = tmp_path / "out"
    # 4 images x 2 repeats at batch 1: 8 micro-batches per epoch; the checkpoint is at the 3rd.
    first = ("--learning_rate", "1e-4", "--train_batch_size", "1", "--repeats", "2",
             "--max_train_steps", "3", "--checkpointing_steps", "3")  # fmt: skip
    assert cli(*flags(root, out, *first)).code == 0
    saved_state, saved_tensors = final_state(out)
    assert saved_state["progress"]["position"] == 3
    changed = ("--learning_rate", "1e-2", "--train_batch_size", "8", "--adam_beta2", "0.99",
               "--max_train_steps", "5", "--resume_from_checkpoint", "latest")  # fmt: skip
    plan = cli(*flags(root, out, *first, *changed, "--dry_run"))
    assert plan.code == 0, plan.err
    assert "Learning rate: 0.08 (0.01 x batch 8" in plan.out  # what the run below uses
    assert ("changed: --learning_rate 0.0001 -> 0.01; --adam_beta2 0.999 -> 0.99; "
            "--train_batch_size 1 -> 8") in plan.out  # fmt: skip
    caplog.set_level(logging.INFO, logger="invokeai_ti")
    run = setup(_config(*flags(root, out, *first, *changed)))
    group = run.optimizer.param_groups[0]
    assert (group["lr"], group["betas"]) == (pytest.approx(0.08), (0.9, 0.99))
    moments = run.optimizer.state[run.placeholders[0].vectors]
    assert torch.equal(moments["exp_avg"], saved_tensors["optimizer.0.exp_avg"])
    # 3 samples seen; a batch of 8 has nothing left in that epoch: the next one starts.
    assert (run.progress.epoch, run.progress.position) == (1, 0)
    said = [r.getMessage() for r in caplog.records if "Changed since" in r.getMessage()]
    assert len(said) == 1 and "learning rate now 0.08" in said[0]
    resumed = cli(*flags(root, out, *first, *changed))
    assert resumed.code == 0, resumed.err
    state, _ = final_state(out)
    assert state["progress"]["step"] == 5 and 0.0 not in state["progress"]["losses"]
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.08)


def test_total_limit_and_leftovers_of_a_killed_save(cli, root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # What a SIGKILL during a save leaves: temp files/folders and never a half checkpoint-N.
    leftovers = [out / ".checkpoint-7.a1b2.tmp", out / ".learned_embeds.bin.x9.tmp",
                 root / "embeddings" / "psychedelic" / ".learned_embeds.bin.y8.tmp"]  # fmt: skip
    leftovers[0].mkdir(parents=True)
    (leftovers[0] / ckpt.TENSORS_FILE).write_bytes(b"half")
    for path in leftovers[1:]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert ckpt.find_resume_folder(out, "latest") is None  # temp folders are never `latest`
    seen = []
    prune = ckpt.prune_checkpoints

    def prune_after_complete(output_dir, keep):
        seen.append([p.name for p in ckpt.list_checkpoints(output_dir)])
        return prune(output_dir, keep)

    monkeypatch.setattr(ckpt, "prune_checkpoints", prune_after_complete)
    result = cli(*flags(root, out, "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
                        "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert result.code == 0, result.err
    assert not any(path.exists() for path in leftovers)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]
    # Each pruning came after the new checkpoint was complete: never fewer than 2 on disk.
    assert seen == [["checkpoint-1"], ["checkpoint-1", "checkpoint-2"],
                    ["checkpoint-1", "checkpoint-2", "checkpoint-3"],
                    ["checkpoint-2", "checkpoint-3", "checkpoint-4"]]  # fmt: skip
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _adamw_state(dim: int, num_vectors: int = 1) -> ckpt.CheckpointState:
    vectors = torch.nn.Parameter(torch.randn(num_vectors, dim))
    optimizer = torch.optim.AdamW([vectors], lr=1e-3)
    vectors.sum().backward()
    optimizer.step()
    config = TrainingConfig(placeholder_token=TOKEN, max_train_steps=5000)
    return ckpt.CheckpointState(ckpt.Progress(step=3000, seed=1, losses=[0.123456789] * 3000),
                                [vectors], optimizer.state_dict(), {"token_dims": [dim]},
                                config.to_json())  # fmt: skip


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_checkpoint_size_does_not_grow_with_the_model(cli, root, tmp_path, tiny_sd1):
    result = cli(*flags(root, tmp_path / "out", "--max_train_steps", "1"))
    assert result.code == 0, result.err
    folder = tmp_path / "out" / "checkpoint-1"
    tiny = folder_size(folder)
    tensors = load_file(folder / ckpt.TENSORS_FILE)
    assert sorted(k for k in tensors if not k.startswith("rng.")) == [
        "optimizer.0.exp_avg", "optimizer.0.exp_avg_sq", "optimizer.0.step", "vectors.0"]  # fmt: skip
    assert all(t.numel() <= 32 for k, t in tensors.items() if not k.startswith("rng."))
    encoder = (tiny_sd1 / "text_encoder" / "model.safetensors").stat().st_size
    assert tiny < 64 * 1024 and tiny < encoder / 4, (tiny, encoder)
    # SD1.5's shape (768-d tokens, a 49408-row vocabulary nowhere in it), 3000 logged losses.
    sd15 = folder_size(ckpt.save_checkpoint(tmp_path / "sd15", _adamw_state(768)))
    sdxl = folder_size(ckpt.save_checkpoint(tmp_path / "sdxl", _adamw_state(1280, 8)))
    assert sd15 < 256 * 1024 and sdxl < 512 * 1024, (sd15, sdxl)
    print(
        f"checkpoint size: tiny run {tiny} B, SD1.5-shaped (3000 steps) {sd15} B, "
        f"SDXL clip_g-shaped 8 vectors {sdxl} B"
    )


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.atomic_write_text(tmp_path / "a.txt", "x")
        folder = ckpt.save_checkpoint(tmp_path, _adamw_state(8))
        os.umask(0o027)
        private = atomic.save_torch(tmp_path / "b.bin", {"t": torch.zeros(2)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}
    assert private.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_unpickles_code(tmp_path, cli):
    from invokeai_ti.files.formats import read_embedding

    marker = tmp_path / "pwned"
    evil = tmp_path / "learned_embeds.bin"
    evil.write_bytes(pickle.dumps({TOKEN: _Exploit(marker)}))
    torch.save({TOKEN: _Exploit(marker)}, tmp_path / "evil.pt")
    for path in (evil, tmp_path / "evil.pt"):
        with pytest.raises(UserError):
            read_embedding(path)
        assert cli("--inspect", path).code != 0
    folder = tmp_path / "checkpoint-3"  # a checkpoint whose tensor file is a pickle
    ckpt.save_checkpoint(tmp_path, _adamw_state(8)).rename(folder)
    (folder / ckpt.TENSORS_FILE).write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ResumeError):
        ckpt.load_checkpoint(folder)
    assert not marker.exists()


# --- real processes: signals ------------------------------------------------------------------


def start(root: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invokeai_ti", *flags(root, out, "--log_every_steps", "1", *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env=dict(os.environ, **(env or {})),
    )  # fmt: skip


def slow_saves(seconds: float) -> dict[str, str]:
    """Environment for a run whose checkpoint saves pause `seconds` between their two files."""
    path = [str(Path(__file__).parent / "slow_saves"), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p), "SLOW_SAVE_SECONDS": str(seconds)}


def wait_for(stream, text: str, timeout: float = 300) -> str:
    """Read lines until one contains `text`."""
    end, seen = time.monotonic() + timeout, []
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} never came: {''.join(seen)[-2000:]}")


def test_ctrl_c_before_the_first_step_exits_130_at_once(root, tmp_path):
    proc = start(root, tmp_path / "out", "--max_train_steps", "50")
    wait_for(proc.stderr, "Loading ")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "invokeai-ti: interrupted before the first optimizer step: nothing to save."
    )
    assert "Traceback" not in err and not ckpt.list_checkpoints(tmp_path / "out")


def test_sigterm_saves_the_current_step_and_second_ctrl_c_aborts(root, tmp_path):
    out = tmp_path / "out"
    proc = start(root, out, "--max_train_steps", "200")
    wait_for(proc.stdout, "step 2/200")
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = next(x for x in stdout.splitlines() if x.startswith("Stopped at step"))
    step = int(line.split()[3].rstrip(":"))
    assert step >= 2 and f"checkpoint saved in {out / f'checkpoint-{step}'}" in line
    saved = load_file(out / f"checkpoint-{step}" / ckpt.TENSORS_FILE)["vectors.0"][0]
    embeds = torch.load(out / f"learned_embeds-steps-{step}.bin", weights_only=True)[TOKEN]
    assert torch.equal(saved, embeds)
    # Two Ctrl-C: the first asks for a save at the end of the step, the second aborts at once.
    # A tiny step and its save can finish within the 50 ms between them, so the save is slowed
    # down: the second signal must land while the run is still going.
    proc = start(
        root,
        out,
        "--max_train_steps",
        "200",
        "--resume_from_checkpoint",
        "latest",
        env=slow_saves(1.0),
    )
    wait_for(proc.stdout, f"step {step + 1}/200")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "aborted by a second Ctrl-C" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_same_embedding(root, tmp_path):
    """>= 10 SIGKILLs: half as soon as a checkpoint's temp folder appears (inside the save, which
    the slow_saves hook makes last 0.3 s), half at a random moment of training. After each, `latest`
    must be the newest complete checkpoint; the last run ends with the uninterrupted embedding."""
    steps, rng = 16, random.Random(1234)
    extra = ("--max_train_steps", str(steps), "--checkpointing_steps", "1", "--save_steps", "100")
    env = slow_saves(0.3)
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "invokeai_ti", *flags(root, reference, *extra)],
                          env=dict(os.environ, **env), capture_output=True).returncode == 0  # fmt: skip
    out, kills, during_save = tmp_path / "out", 0, 0
    while kills < 10:
        newest = ckpt.list_checkpoints(out)
        proc = start(root, out, *extra, "--resume_from_checkpoint", "latest", env=env)
        wait_for(proc.stderr, "Resuming from" if newest else "Loading ")
        start_step = int(newest[-1].name.split("-")[1]) if newest else 0
        if kills % 2 == 0:  # inside a save: a temp folder of a checkpoint after the first new one
            while not any(p.name.startswith(f".checkpoint-{start_step + 2}.") for p in _ls(out)):
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.005)
            during_save += 1
        else:  # a random moment of the first two new steps (so 10 kills fit in the run)
            wait_for(proc.stdout, f"step {start_step + 1}/")
            deadline = time.monotonic() + rng.uniform(0, 1.5)
            while (
                time.monotonic() < deadline and not (out / f"checkpoint-{start_step + 2}").exists()
            ):
                time.sleep(0.005)
        proc.kill()
        proc.communicate()
        kills += 1
        complete = ckpt.list_checkpoints(out)
        assert complete and ckpt.find_resume_folder(out, "latest") == complete[-1]
        if int(complete[-1].name.split("-")[1]) >= steps - 1:
            break
    final = subprocess.run([sys.executable, "-m", "invokeai_ti",
                            *flags(root, out, *extra, "--resume_from_checkpoint", "latest")],
                           capture_output=True, text=True)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert kills >= 10 and during_save >= 5, (kills, during_save)
    assert torch.equal(learned(out), learned(reference))
    assert_same_run(out, reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _ls(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []
