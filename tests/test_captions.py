"""Captions and prompt templates (issue 19, item 1): kohya-style caption files, A1111 template
files, tag shuffle and dropout, and the trigger in every prompt exactly once (token level)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, make_concept_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invokeai_ti.config import TrainingConfig
from invokeai_ti.data import captions, dataset
from invokeai_ti.errors import DataError

TOKEN = "<psychedelic>"


def prompts_for(tmp_path: Path, caption_texts: list[str] | None, template_lines: list[str] | None,
                **flags) -> captions.Prompts:  # fmt: skip
    """build_prompts over real files: one image per caption, and a template file if given."""
    data = make_concept_images(tmp_path / "data", count=len(caption_texts or [""]))
    images = dataset.find_image_files(data)
    if caption_texts is not None:
        for image, text in zip(images, caption_texts):
            (data / f"{image.stem}.txt").write_text(text)
        flags.setdefault("caption_extension", ".txt")
    if template_lines is not None:
        (tmp_path / "templates.txt").write_text("\n".join(template_lines) + "\n")
        flags["template_file"] = tmp_path / "templates.txt"
    config = TrainingConfig(placeholder_token=flags.pop("placeholder_token", TOKEN), **flags)
    return captions.build_prompts(config, images, " ".join(config.placeholder_tokens))


@pytest.mark.parametrize("template, caption, expected", [
    # A1111's placeholders, ours, and diffusers' {}.
    ("a photo of [name], [filewords]", "red disc, grey room", f"a photo of {TOKEN}, red disc, grey room"),
    ("{caption}, in the style of {trigger}", "oil, dark", f"oil, dark, in the style of {TOKEN}"),
    ("a photo of a {}", "ignored here", f"a photo of a {TOKEN}"),
    # kohya captions start with the trigger: removed, the template places it once.
    ("a photo of [name], [filewords]", f"{TOKEN}, red disc", f"a photo of {TOKEN}, red disc"),
    # A line without the trigger gets it in front; an empty caption leaves no dangling comma.
    ("[filewords]", "red disc", f"{TOKEN}, red disc"),
    ("a photo of [name], [filewords]", "", f"a photo of {TOKEN}"),
    # The trigger written out in a template line is the trigger, not text to add it to.
    (f"a photo of {TOKEN} on a table", "x", f"a photo of {TOKEN} on a table"),
])  # fmt: skip
def test_templates_and_captions_make_the_prompt(tmp_path, template, caption, expected):
    prompts = prompts_for(tmp_path, [caption], [template])
    assert prompts.text(0, 0) == expected


def test_built_in_templates_stay_the_default_and_take_the_caption_after(tmp_path):
    plain = prompts_for(tmp_path / "a", None, None)
    assert plain.templates[0] == "{trigger}".join(dataset.OBJECT_TEMPLATES[0].split("{}"))
    assert plain.text(0, 0) == f"a photo of a {TOKEN}" and plain.num_templates == 27
    style = prompts_for(tmp_path / "b", None, None, learnable_property="style")
    assert style.text(0, 0) == f"a painting in the style of {TOKEN}"
    with_captions = prompts_for(tmp_path / "c", ["red disc"], None)
    assert (
        with_captions.text(0, 0) == f"a photo of a {TOKEN}, red disc"
    )  # as A1111's subject_filewords


def test_shuffle_keeps_the_first_tags_and_dropout_drops_the_caption(tmp_path):
    tags = [f"t{i}" for i in range(8)]
    prompts = prompts_for(tmp_path, [f"{TOKEN}, " + ", ".join(tags)], ["[name], [filewords]"],
                          shuffle_caption=True, keep_tokens=2, caption_dropout_rate=0.25)  # fmt: skip
    seen, dropped = set(), 0
    for seed in range(400):
        text = prompts.text(0, 0, seed)
        assert text == prompts.text(0, 0, seed)  # a pure function of the seed: resumable
        if text == TOKEN:
            dropped += 1
            continue
        words = text.split(", ")
        # kohya counts the leading trigger tag in --keep_tokens 2: it and t0 stay first.
        assert words[:2] == [TOKEN, "t0"] and sorted(words[2:]) == tags[1:]
        seen.add(tuple(words))
    assert 60 < dropped < 140  # 25 % of 400
    assert len(seen) > 50  # really shuffled
    assert prompts.text(0, 0) == f"{TOKEN}, " + ", ".join(tags)  # no seed: the whole caption


@pytest.fixture(scope="module")
def tokenizer(tiny_sd1):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sd1 / "tokenizer")
    tok.add_tokens([TOKEN, f"{TOKEN}_1"])
    return tok


WORDS = [
    "a",
    "photo",
    "red",
    "disc",
    "<",
    ">",
    "psychedelic",
    TOKEN,
    TOKEN.upper(),
    f"{TOKEN}_1",
    "[name]",
    "{trigger}",
    "[filewords]",
    "{caption}",
    "{}",
    ",",
    " ",
    "x" + TOKEN,
    TOKEN + "s",
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(caption=st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
       template=st.lists(st.sampled_from(["a", "photo", "of", "[name]", "[filewords]", "{caption}",
                                          "{trigger}", ","]), min_size=1, max_size=6).map(" ".join),
       num_vectors=st.integers(1, 2), seed=st.integers(0, 2**31 - 1), shuffle=st.booleans(),
       keep=st.integers(0, 3), dropout=st.sampled_from([0.0, 0.5, 1.0]))  # fmt: skip
def test_the_trigger_is_in_every_prompt_exactly_once(tmp_path_factory, tokenizer, caption, template,
                                                     num_vectors, seed, shuffle, keep, dropout):  # fmt: skip
    """Whatever the caption holds (the trigger, in capitals, glued to a word, a placeholder's
    name) and whatever the template, each placeholder token id occurs once in the token ids."""
    if template.count("[name]") + template.count("{trigger}") > 1:
        return  # refused with a one-line error, tested below
    if template.count("[filewords]") + template.count("{caption}") > 1:
        return
    tmp = tmp_path_factory.mktemp("p")
    prompts = prompts_for(tmp, [caption], [template], num_vectors=num_vectors,
                          shuffle_caption=shuffle, keep_tokens=keep, caption_dropout_rate=dropout)  # fmt: skip
    ids = prompts.token_ids([prompts.text(0, 0, seed), prompts.text(0, 0)], [tokenizer], "cpu")[0]
    for token in [TOKEN, f"{TOKEN}_1"][:num_vectors]:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert (ids == token_id).sum(dim=1).tolist() == [1, 1], prompts.text(0, 0, seed)


def test_bad_templates_and_captions_are_one_line_naming_the_file(tmp_path):
    cases = [
        (["[name] by [name]"], "names the trigger 2 times"),
        (["# only a comment", ""], "holds no templates"),
        (["[filewords] [filewords] [name]"], "has the caption twice"),
    ]
    for i, (lines, said) in enumerate(cases):
        with pytest.raises(DataError, match=said) as err:
            prompts_for(tmp_path / str(i), ["x"], lines)
        assert "templates.txt" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        prompts_for(tmp_path / "m", None, None, template_file=tmp_path / "missing.txt")
    data = make_concept_images(tmp_path / "bytes", count=1)
    (data / "concept-0.txt").write_bytes(b"\xff\xfe\xfa bad")
    config = TrainingConfig(placeholder_token=TOKEN, caption_extension="txt")  # "txt" reads .txt
    with pytest.raises(DataError, match=r"caption file .*concept-0.txt cannot be read"):
        captions.build_prompts(config, dataset.find_image_files(data), TOKEN)
    (data / "concept-0.txt").unlink()
    with pytest.raises(DataError, match="no image in .* has a caption file"):
        captions.build_prompts(config, dataset.find_image_files(data), TOKEN)


@pytest.fixture
def kohya_root(root) -> Path:
    """The root's concept images as kohya users keep them: image + .txt caption, trigger first."""
    data = root / "text-inversion-training-data" / "psychedelic"
    for i, image in enumerate(sorted(data.glob("*.png"))):
        (data / f"{image.stem}.txt").write_text(f"{TOKEN}, red disc, grey background {i}\n")
    return root


def test_a_kohya_folder_and_an_a1111_template_file_train_unchanged(cli, kohya_root, tmp_path):
    # A1111's subject_filewords.txt, first lines as shipped.
    a1111 = tmp_path / "subject_filewords.txt"
    a1111.write_text("a photo of a [name], [filewords]\na rendering of a [name], [filewords]\n"
                     "a cropped photo of the [name], [filewords]\n")  # fmt: skip
    base = ("--root_dir", kohya_root, "--placeholder_token", TOKEN, *TINY_FLAGS,
            "--validation_steps", "0", "--caption_extension", ".txt")  # fmt: skip
    plan = cli(*base, "--template_file", a1111, "--shuffle_caption", "--keep_tokens", "1",
               "--dry_run")  # fmt: skip
    assert plan.code == 0, plan.err
    assert (f"Prompts: 3 {a1111} templates, captions from .txt files (4 of 4 images have one; "
            f"shuffled after 1 tag(s)); e.g. 'a photo of a {TOKEN}, red disc, grey background 0'."
            ) in plan.out  # fmt: skip
    trained = cli(*base, "--template_file", a1111, "--output_dir", tmp_path / "a1111")
    assert trained.code == 0 and "Trained 4 steps" in trained.out, trained.err
    kohya = cli(*base, "--output_dir", tmp_path / "kohya")
    assert kohya.code == 0 and "Trained 4 steps" in kohya.out, kohya.err
    # Caption files beside the images are not images, and the plan says none was skipped.
    assert "Images: 4 used" in cli(*base, "--dry_run").out


def test_captions_change_what_is_trained(cli, kohya_root, tmp_path):
    """The same run with and without captions learns different vectors: the captions reach the
    text encoder (a prompt-building bug that dropped them would give equal vectors)."""
    import torch

    base = ("--root_dir", kohya_root, "--placeholder_token", TOKEN, *TINY_FLAGS,
            "--validation_steps", "0")  # fmt: skip
    assert cli(*base, "--output_dir", tmp_path / "plain").code == 0
    assert (
        cli(*base, "--output_dir", tmp_path / "captioned", "--caption_extension", ".txt").code == 0
    )
    plain, captioned = (torch.load(tmp_path / name / "learned_embeds.bin", weights_only=True)[TOKEN]
                        for name in ("plain", "captioned"))  # fmt: skip
    assert not torch.equal(plain, captioned)


def test_a_caption_file_missing_for_some_images_is_a_warning(tmp_path, caplog):
    data = make_concept_images(tmp_path / "data", count=3)
    (data / "concept-0.txt").write_text("red disc")
    config = TrainingConfig(placeholder_token=TOKEN, caption_extension=".txt")
    prompts = captions.build_prompts(config, dataset.find_image_files(data), TOKEN)
    assert prompts.captions == ["red disc", "", ""]
    assert "2 image(s) have no .txt caption" in caplog.text
    shutil.rmtree(data)
