"""Config files (issue 19, item 4): --config run.toml / run.yaml holds flags by name, the command
line wins, bad files are one line naming the file and key, and every run writes the config it
trained with, so `--config OUTPUT/config.toml` repeats it bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS

from invokeai_ti.files import checkpoint as ckpt
from invokeai_ti.files.config_file import NOT_WRITTEN, config_file_text
from invokeai_ti.front.cli import parse_config
from invokeai_ti.invokeai.root import apply_root_defaults

TOKEN = "<psychedelic>"


def configured(*argv):
    config, _ = parse_config([str(a) for a in argv])
    return config


def test_toml_and_yaml_set_flags_and_the_command_line_wins(tmp_path):
    (tmp_path / "run.toml").write_text(
        '# a comment\nplaceholder_token = "<disc>"\nlearning_rate = 0.002\nresolution = 256\n'
        'center_crop = true\nexport_format = ["diffusers", "a1111"]\ntrain_data_dir = "data"\n'
        'root = "/tmp/r"\ncaption_extension = ".txt"\ncheckpoints_total_limit = 3\n'
    )  # fmt: skip
    config = configured("--config", tmp_path / "run.toml", "--resolution", "128")
    assert (config.placeholder_token, config.learning_rate, config.resolution) == (
        "<disc>",
        0.002,
        128,
    )
    assert config.center_crop and config.export_format == ["diffusers", "a1111"]
    assert config.train_data_dir == Path("data") and config.root_dir == Path("/tmp/r")  # alias
    assert config.caption_extension == ".txt" and config.checkpoints_total_limit == 3
    assert config.config == tmp_path / "run.toml"
    # A repeatable flag given on the command line replaces the file's list, a boolean turns off.
    config = configured("--config", tmp_path / "run.toml", "--export_format", "comfyui",
                        "--no-center_crop")  # fmt: skip
    assert config.export_format == ["comfyui"] and not config.center_crop
    (tmp_path / "run.yaml").write_text("placeholder_token: <disc>\nmax_train_steps: 7\n"
                                       "shuffle_caption: true\nexport_format: a1111\n")  # fmt: skip
    config = configured("--config", tmp_path / "run.yaml", "--max_train_steps", "9")
    assert (config.max_train_steps, config.shuffle_caption, config.export_format) == (
        9,
        True,
        ["a1111"],
    )


@pytest.mark.parametrize("name, text, said", [
    ("a.toml", "resolutoin = 5\n", "unknown key 'resolutoin' (did you mean resolution?)"),
    ("a.toml", 'resolution = "512"\n', "resolution must be a whole number, got '512'"),
    ("a.toml", "learning_rate = true\n", "learning_rate must be a number, got True"),
    ("a.toml", "export_format = [1]\n", "export_format must be a list of strings"),
    ("a.toml", 'lr_scheduler = "fast"\n', "lr_scheduler 'fast' is not one of: linear"),
    ("a.toml", "resolution = \n", "is not valid TOML"),
    ("a.yaml", "- a\n- b\n", "expected 'flag = value' lines (a table), got a list"),
    ("a.yaml", "a: [\n", "is not valid YAML"),
    ("a.ini", "x=1\n", "use a .toml or .yaml file"),
    ("a.toml", "config = 'other.toml'\n", "unknown key 'config'"),
])  # fmt: skip
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(cli, tmp_path, name, text, said):
    path = tmp_path / name
    path.write_text(text)
    result = cli("--config", path, "--placeholder_token", TOKEN)
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip().splitlines() == [result.err.strip()]
    assert result.err.startswith(f"invokeai-ti: error: --config {path}") and said in result.err


def test_a_missing_config_file_is_named(cli, tmp_path):
    result = cli("--config", tmp_path / "nope.toml")
    assert result.code == 2 and f"--config {tmp_path / 'nope.toml'} does not exist" in result.err


def test_every_run_writes_its_config_and_the_file_repeats_the_run(cli, root, tmp_path):
    """A run with a drawn seed (no --seed) still repeats: the file holds the seed it drew."""
    seed_at = TINY_FLAGS.index("--seed")
    flags = TINY_FLAGS[:seed_at] + TINY_FLAGS[seed_at + 2 :]
    for image in (root / "text-inversion-training-data" / "psychedelic").glob("*.png"):
        image.with_suffix(".txt").write_text(f"red disc, {image.stem}")
    first = tmp_path / "first"
    result = cli("--root_dir", root, "--placeholder_token", TOKEN, *flags, "--validation_steps", "0",
                 "--output_dir", first, "--caption_extension", ".txt", "--hub_token", "secret")  # fmt: skip
    assert result.code == 0, result.err
    written = (first / "config.toml").read_text()
    assert written.startswith("# invokeai-ti ") and "secret" not in written
    assert "\nseed = " in written and f'\noutput_dir = "{first}"' in written
    again = tmp_path / "again"
    repeat = cli("--config", first / "config.toml", "--output_dir", again)
    assert repeat.code == 0, repeat.err
    learned = [
        torch.load(out / "learned_embeds.bin", weights_only=True)[TOKEN] for out in (first, again)
    ]
    assert torch.equal(*learned)
    # Same flags -> same config and the same fingerprint; only the output folder was changed.
    configs = [
        apply_root_defaults(configured("--config", out / "config.toml")) for out in (first, again)
    ]
    assert dataclasses.replace(configs[1], output_dir=first, config=None) == dataclasses.replace(
        configs[0], config=None)  # fmt: skip
    assert ckpt.fingerprint(configs[0], [32], 1) == ckpt.fingerprint(configs[1], [32], 1)
    states = [ckpt.read_state(ckpt.list_checkpoints(out)[-1]) for out in (first, again)]
    assert states[0]["fingerprint"] == states[1]["fingerprint"]
    assert states[0]["progress"]["losses"] == states[1]["progress"]["losses"]


def test_a_yaml_config_gives_a_yaml_copy_and_the_written_file_reads_back(cli, root, tmp_path):
    (tmp_path / "run.yaml").write_text(f"root_dir: {root}\nplaceholder_token: '{TOKEN}'\n"
                                       "max_train_steps: 2\n")  # fmt: skip
    out = tmp_path / "out"
    result = cli("--config", tmp_path / "run.yaml", *TINY_FLAGS, "--max_train_steps", "3",
                 "--validation_steps", "0", "--output_dir", out)  # fmt: skip
    assert result.code == 0, result.err
    assert not (out / "config.toml").exists()
    back = configured("--config", out / "config.yaml")
    assert back.max_train_steps == 3 and back.placeholder_token == TOKEN  # the flag won
    # Every field survives the TOML writer, including floats such as 1e-08 and quoted strings.
    config = dataclasses.replace(back, validation_prompt='a "quoted" <psychedelic>\\ photo',
                                 adam_epsilon=1e-8, learning_rate=3.5e-05)  # fmt: skip
    values = {k: v for k, v in config.to_dict().items() if v is not None and k not in NOT_WRITTEN}
    (tmp_path / "all.toml").write_text(config_file_text(values, yaml_format=False))
    again = configured("--config", tmp_path / "all.toml")
    assert dataclasses.replace(again, config=None) == dataclasses.replace(
        config, config=None, resume_from_checkpoint=None)  # fmt: skip


def test_the_gui_opens_prefilled_from_a_config_file(tmp_path, root):
    from invokeai_ti.front.gui import form

    (tmp_path / "run.toml").write_text(f'placeholder_token = "<disc>"\nmax_train_steps = 321\n'
                                       f'learning_rate = 0.003\nroot_dir = "{root}"\n')  # fmt: skip
    config = configured("--gui", "--config", tmp_path / "run.toml")
    assert config.front_end
    values = form.initial_values(config, root, "stable-diffusion-1.5", None, ["no"])
    assert (values.trigger, values.max_train_steps, values.learning_rate) == (
        "disc",
        "321",
        "0.003",
    )
