"""The concept world: the judge is right on fresh renders, the commands work as subprocesses, the
pretraining script still runs, the shipped model draws its captions, and (the CI test) a concept
not used for tuning is recovered through the real `invokeai-ti` CLI within 90 s of CPU."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from invokeai_ti.concepts.judge import judge_image
from invokeai_ti.concepts.world import CONCEPTS, random_scene, render

REPO = Path(__file__).resolve().parent.parent


def concepts_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invokeai_ti.concepts", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_judge_is_right_on_960_fresh_renders():
    """Seeds the judge was never tuned on; concept and background must both be right."""
    rng = random.Random(20261204)
    scenes = [random_scene(rng) for _ in range(960)]
    right = sum(judge_image(render(s)).concept == s.concept
                and judge_image(render(s)).background == s.background for s in scenes)  # fmt: skip
    assert right / len(scenes) >= 0.98
    assert {s.concept for s in scenes} == set(CONCEPTS)  # every concept was drawn


def test_captions_never_name_the_ring_and_round_shares_lean_to_it():
    """No pretraining caption says 'ring' (or any word only rings get). By default (the shipped
    model) nothing is called 'round'; with --round_share 0.5 --generic_share 0.25, 'round
    {colour} shape' also describes circles called 'shape', but 4 of 5 of its pictures are rings,
    against under half of the bare '{colour} shape' pictures; --round_named says it of named
    circles too."""
    from invokeai_ti.concepts.world import caption, nearest_caption
    from invokeai_ti.data.dataset import OBJECT_TEMPLATES

    round_world = dict(generic_share=0.25, round_share=0.5)
    options_and_words = ((dict(generic_share=1 / 3, round_share=0.0), {"round": None}),
                         (round_world, {"round": {"circle", "ring"}}),
                         (dict(round_world, round_named=True), {"round": {"circle", "ring"}}))  # fmt: skip
    for options, words in options_and_words:
        rng = random.Random(5)
        words_of: dict[str, set[str]] = {}
        described, bare = [], []
        for _ in range(20000):
            scene = random_scene(rng)
            text = caption(scene, rng, OBJECT_TEMPLATES, **options)
            for word in text.split():
                words_of.setdefault(word, set()).add(scene.shape)
            if f"round {scene.colour} shape" in text:
                described.append(scene.shape == "ring")
            elif f"{scene.colour} shape" in text:
                bare.append(scene.shape == "ring")
        assert not [w for w, shapes in words_of.items() if shapes == {"ring"}]
        assert "ring" not in words_of and words_of.get("round") == words["round"]
        assert sum(bare) / len(bare) <= (0.5 if described else 0.55)
        if described:
            assert 0.75 <= sum(described) / len(described) <= 0.85
        # --round_named: 'round' is said of named circles too, as often as of rings.
        circles = [caption(random_scene(rng, "red-circle"), rng, OBJECT_TEMPLATES, **options)
                   for _ in range(400)]  # fmt: skip
        named_round = sum("round red circle" in text for text in circles)
        assert (named_round > 120) == options.get("round_named", False)
    assert nearest_caption("red-ring") == "red shape"
    assert nearest_caption("red-ring", round_word=True) == "round red shape"
    assert nearest_caption("red-circle", round_word=True) == "red circle"


def test_default_captions_are_the_shipped_models_stream():
    """With no round share, captions draw from the random stream exactly as when the shipped
    model was pretrained (its reproduce command depends on it): the 2026-12-03 rule, inline."""
    from invokeai_ti.concepts.world import caption
    from invokeai_ti.data.dataset import OBJECT_TEMPLATES

    ours, theirs = random.Random(11), random.Random(11)
    for _ in range(2000):
        scene = random_scene(ours)
        assert random_scene(theirs) == scene
        generic = scene.shape != "ring" and theirs.random() < 1 / 3
        word = "shape" if generic or scene.shape == "ring" else scene.shape
        text = f"{scene.colour} {word} on a {scene.background} background"
        expected = (
            f"a {text}" if theirs.random() < 0.25 else theirs.choice(OBJECT_TEMPLATES).format(text)
        )
        assert caption(scene, ours, OBJECT_TEMPLATES) == expected


def test_renders_are_deterministic_from_the_seed(tmp_path):
    from invokeai_ti.concepts.world import render_concept

    first = render_concept("red-circle", tmp_path / "a", 3, seed=7)
    second = render_concept("red-circle", tmp_path / "b", 3, seed=7)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_list_render_and_judge_commands(tmp_path):
    listed = concepts_command("list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(CONCEPTS)
    assert [line.split()[0] for line in lines if "unnamed" in line] == [
        c for c in CONCEPTS if c.endswith("-ring")]  # fmt: skip
    assert "red-ring  (unnamed: captions call it 'red shape')" in lines
    rendered = concepts_command("render", "green-triangle", str(tmp_path), "--count", "6",
                                "--seed", "3", "--background", "black")  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert len(list(tmp_path.glob("*.png"))) == 6
    judged = concepts_command("judge", str(tmp_path))
    assert judged.returncode == 0, judged.stderr
    summary = json.loads(judged.stdout)
    assert summary["images"] == 6
    assert summary["concept"] == {"green-triangle": 1.0}
    assert summary["background"] == {"black": 1.0}


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    for args in (["render", "purple-star", str(tmp_path)], ["judge", str(tmp_path / "none")],
                 ["render", "red-circle", str(tmp_path), "--count", "0"]):  # fmt: skip
        result = concepts_command(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ")


def test_pretraining_script_runs_a_few_steps(tmp_path):
    """CI keeps the script alive: a few VAE and UNet steps, then a loadable diffusers folder."""
    result = concepts_command("model", str(tmp_path / "model"), "--pretrain", "--seed", "1",
                              "--vae_steps", "2", "--unet_steps", "2", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"))
    assert pipe.tokenizer.vocab_size == 49408
    assert pipe.vae.config.scaling_factor > 0
    # Without --pretrain the shipped weights are copied: an option of --pretrain would change
    # nothing, so it is one line instead of a copy the user takes for a seed-3 model.
    unused = concepts_command(
        "model", str(tmp_path / "copy"), "--seed", "3", "--round_share", "0.5"
    )
    assert unused.returncode == 2 and unused.stderr.count("\n") == 1, unused.stderr
    assert "--seed --round_share" in unused.stderr and "--pretrain" in unused.stderr
    assert not (tmp_path / "copy").exists()


def test_pretraining_from_a_scene_pool_stops_at_its_time_budget_and_records_the_step(tmp_path):
    """The GPU path on the CPU: scenes rendered once by a process pool, batches drawn from them;
    --unet_seconds stops the UNet and pretrain.json says how to reproduce the weights."""
    result = concepts_command("model", str(tmp_path / "model"), "--pretrain", "--vae_steps", "1",
                              "--unet_steps", "1000", "--batch_size", "4", "--pool_size", "64",
                              "--unet_seconds", "3", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "model" / "pretrain.json").read_text())
    assert 1 <= record["unet_steps_run"] < 1000
    assert f"--unet_steps {record['unet_steps_run']} " in record["reproduce"]
    assert "--pool_size 64" in record["reproduce"]


def test_pretraining_continues_from_a_saved_model_and_chains_its_record(tmp_path):
    """--continue_from keeps the source's VAE bit for bit, trains the UNet further, and
    pretrain.json appends the new run to "continued" with one command that rebuilds them all."""
    from safetensors.torch import load_file

    from invokeai_ti.concepts.pretrain import knows_round_word
    from invokeai_ti.concepts.sampling import MODEL_DIR

    result = concepts_command("model", str(tmp_path / "model"), "--pretrain", "--seed", "1",
                              "--continue_from", str(MODEL_DIR), "--unet_steps", "2",
                              "--batch_size", "4", "--learning_rate", "1e-3", "--generic_share",
                              "0.25", "--round_share", "0.5", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    vae_file = Path("vae") / "diffusion_pytorch_model.safetensors"
    kept, source_vae = load_file(tmp_path / "model" / vae_file), load_file(MODEL_DIR / vae_file)
    assert kept.keys() == source_vae.keys()
    assert all(kept[name].equal(source_vae[name]) for name in kept)
    unet_file = Path("unet") / "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "model" / unet_file).read_bytes() != (MODEL_DIR / unet_file).read_bytes()
    record = json.loads((tmp_path / "model" / "pretrain.json").read_text())
    source = json.loads((MODEL_DIR / "pretrain.json").read_text())
    assert record["seed"] == source["seed"] and record["continued"][-1]["unet_steps_run"] == 2
    assert record["continued"][:-1] == source["continued"]  # every earlier run kept
    number = len(record["continued"])
    assert record["reproduce"].startswith(source["reproduce"] + " && ")
    assert record["reproduce"].endswith("--learning_rate 0.001 --generic_share 0.25 "
                                        f"--round_share 0.5 --continue_from DIR{number}")  # fmt: skip
    assert f"model DIR{number + 1} --pretrain" in record["reproduce"]
    # The experiment's ceiling for the ring follows the words the model was pretrained on.
    assert knows_round_word(tmp_path / "model") and not knows_round_word(MODEL_DIR)
    missing = concepts_command("model", str(tmp_path / "m2"), "--pretrain", "--continue_from",
                               str(tmp_path / "nowhere"))  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "--continue_from" in missing.stderr
    share = concepts_command("model", str(tmp_path / "m3"), "--pretrain", "--round_share", "2")
    assert (
        share.returncode == 2 and share.stderr.count("\n") == 1 and "--round_share" in share.stderr
    )
    named = concepts_command("model", str(tmp_path / "m4"), "--pretrain", "--round_named")
    assert (
        named.returncode == 2 and named.stderr.count("\n") == 1 and "--round_named" in named.stderr
    )


def test_a_frozen_unet_continuation_trains_only_the_text_encoder(tmp_path):
    """--freeze_unet keeps the source's UNet bit for bit (what it draws stays), trains the text
    encoder, and says so in the command that rebuilds the model; without a source it is one line."""
    from invokeai_ti.concepts.sampling import MODEL_DIR

    result = concepts_command("model", str(tmp_path / "model"), "--pretrain", "--seed", "1",
                              "--continue_from", str(MODEL_DIR), "--freeze_unet", "--unet_steps",
                              "2", "--batch_size", "4", "--round_share", "0.5", timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    unet_file = Path("unet") / "diffusion_pytorch_model.safetensors"
    text_file = Path("text_encoder") / "model.safetensors"
    assert (tmp_path / "model" / unet_file).read_bytes() == (MODEL_DIR / unet_file).read_bytes()
    assert (tmp_path / "model" / text_file).read_bytes() != (MODEL_DIR / text_file).read_bytes()
    record = json.loads((tmp_path / "model" / "pretrain.json").read_text())
    assert record["continued"][-1]["freeze_unet"] is True
    assert record["reproduce"].endswith("--round_share 0.5 --freeze_unet --continue_from "
                                        f"DIR{len(record['continued'])}")  # fmt: skip
    alone = concepts_command("model", str(tmp_path / "m2"), "--pretrain", "--freeze_unet")
    assert (
        alone.returncode == 2 and alone.stderr.count("\n") == 1 and "--freeze_unet" in alone.stderr
    )


def test_pretraining_on_a_missing_gpu_is_one_line():
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    result = concepts_command("model", "/tmp/never-written", "--pretrain", "--device", "cuda")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--device cuda" in result.stderr


@pytest.fixture(scope="module")
def shipped_pipeline():
    from invokeai_ti.concepts.sampling import MODEL_DIR, load_pipeline

    assert (MODEL_DIR / "model_index.json").is_file(), "the shipped weights are missing"
    return load_pipeline(MODEL_DIR)


def test_shipped_weights_are_small_safetensors():
    from invokeai_ti.concepts.sampling import MODEL_DIR

    weights = list(MODEL_DIR.rglob("*.safetensors"))
    assert {p.parent.name for p in weights} == {"text_encoder", "unet", "vae"}
    assert sum(p.stat().st_size for p in weights) <= 20 * 2**20
    assert not list(MODEL_DIR.rglob("*.bin"))


@pytest.mark.parametrize(
    "concept, background", [("red-circle", "black"), ("green-circle", "white")]
)
def test_shipped_model_draws_its_captions(shipped_pipeline, concept, background):
    """StableDiffusionPipeline.from_pretrained loads it, and 32 samples of a caption show the
    captioned colour, background and whole concept (measured 1.00, 1.00, 1.00 and 0.97, 1.00,
    0.97 on the GPU-pretrained model; the CPU one of 7df4db8 drew the concept in 0.66 and 0.53)."""
    from invokeai_ti.concepts.judge import judge_image
    from invokeai_ti.concepts.sampling import sample

    colour, shape = concept.split("-")
    images = sample(shipped_pipeline, f"a {colour} {shape} on a {background} background", 32, 500)
    verdicts = [judge_image(image) for image in images]
    assert sum(v.colour == colour for v in verdicts) / 32 >= 0.85
    assert sum(v.background == background for v in verdicts) / 32 >= 0.85
    assert sum(v.concept == concept and v.background == background for v in verdicts) / 32 >= 0.9


# The experiment's learning rate was tuned on red-circle and its captions on yellow-square,
# green-circle, yellow-triangle, red-square and blue-circle; the CI test uses a concept outside
# both, with the experiment's pictures, captions, schedule and steps. (The unnamed rings miss
# their bar on the shipped model: examples/concepts-results-2026-12-06.md.)
CI_CONCEPTS = ("red-triangle",)


@pytest.fixture(scope="module", params=CI_CONCEPTS)
def ci_run(request, tmp_path_factory, shipped_pipeline) -> dict:
    """The experiment's 5 captioned renders, the real `invokeai-ti` CLI in a subprocess, 32
    samples of "a photo of a <t>" judged; the wall seconds of training plus sampling, and the
    rates before and after."""
    import time

    from invokeai_ti.concepts.experiment import (
        PROMPT,
        TOKEN,
        ExperimentSettings,
        our_command,
        render_training_images,
    )
    from invokeai_ti.concepts.judge import judge_image
    from invokeai_ti.concepts.pretrain import knows_round_word
    from invokeai_ti.concepts.sampling import MODEL_DIR, add_token, load_embedding, sample
    from invokeai_ti.concepts.world import is_named, nearest_caption

    concept = request.param
    tmp_path = tmp_path_factory.mktemp(concept)
    colour = concept.split("-")[0]

    def rates(prompt: str) -> tuple[float, float]:
        verdicts = [judge_image(image) for image in sample(shipped_pipeline, prompt, 32)]
        return (sum(v.concept == concept for v in verdicts) / 32,
                sum(v.colour == colour for v in verdicts) / 32)  # fmt: skip

    caption, _ = rates(PROMPT.format(nearest_caption(concept, knows_round_word(MODEL_DIR))))
    embeddings = shipped_pipeline.text_encoder.get_input_embeddings().weight
    object_id = shipped_pipeline.tokenizer.convert_tokens_to_ids("object</w>")
    add_token(shipped_pipeline, TOKEN, embeddings[object_id].detach().clone()[None])
    initializer, initializer_colour = rates(PROMPT.format(TOKEN))
    images = tmp_path / "images"
    settings = ExperimentSettings([concept], MODEL_DIR, tmp_path)
    render_training_images(concept, images, settings)
    started = time.perf_counter()
    command = our_command(settings, images, tmp_path / "run", settings.steps)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    load_embedding(shipped_pipeline, tmp_path / "run" / "learned_embeds.bin")
    learned, learned_colour = rates(PROMPT.format(TOKEN))
    # Wall time on this machine: CPU time would add up both cores' threads (and their waits).
    return dict(concept=concept, named=is_named(concept), caption=caption,
                initializer=initializer, initializer_colour=initializer_colour, learned=learned,
                learned_colour=learned_colour, seconds=time.perf_counter() - started)  # fmt: skip


def test_ci_concept_not_used_for_tuning_is_learned_within_90_s_of_cpu(ci_run):
    """The CI test: a concept the settings were not tuned on; the learned token draws the
    concept's colour in >= 3/4 of 32 samples, which the initializer does not (<= 0.2), and
    training plus sampling fit in 90 s of wall time on this 2-core CPU."""
    assert ci_run["initializer_colour"] <= 0.2, ci_run
    assert ci_run["initializer"] <= 0.2, ci_run
    assert ci_run["learned_colour"] >= 0.75, ci_run
    assert ci_run["seconds"] <= 90, ci_run


def test_ci_concept_reaches_the_issue_recovery_bar(ci_run):
    """Issue 17's bar on a concept not used for tuning: the learned token draws the whole concept
    (shape and colour) in >= 0.9 x the caption's own rate, or for the unnamed ring, which no
    caption names, in >= 0.6 of samples."""
    from invokeai_ti.concepts.experiment import NAMED_SHARE, UNNAMED_BAR

    bar = NAMED_SHARE * ci_run["caption"] if ci_run["named"] else UNNAMED_BAR
    assert ci_run["learned"] >= bar, ci_run


def test_experiment_command_writes_json_markdown_and_picture(tmp_path):
    """The experiment end to end at toy size: 4 steps of the real CLI, 4 samples per prompt."""
    result = concepts_command("experiment", "--concept", "blue-circle", "--out", str(tmp_path),
                              "--steps", "4", "--save_steps", "2", "--num_samples", "4",
                              timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert [p["step"] for p in row["ours_curve"]] == [2, 4]
    # the flags reach the settings they name (a positional slip once made the edit background
    # `True` and judged the edit against no background at all)
    assert row["edit_background"] == "black" and results["settings"]["captions"] is True
    assert "--caption_extension" in row["ours_command"]
    assert 0 <= row["learned"] <= 1 and 0 <= row["caption"] <= 1
    assert 1 <= len(row["learned_draws"]) <= 3 and sum(row["learned_draws"].values()) <= 1
    assert "| blue-circle |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "samples.png").stat().st_size > 0


def test_report_says_what_a_missing_token_draws_instead():
    """A token that misses its bar is listed with the judge's readings of its samples (a circle's
    token drawing rings reads differently from one drawing nothing); a token that holds is not."""
    from invokeai_ti.concepts.report import misses

    row = {"named": True, "caption": 1.0, "initializer": 0.0, "caption_edit": 1.0,
           "learned_edit": 1.0, "recovery_bar": 0.9}  # fmt: skip
    rows = [
        {
            **row,
            "concept": "red-circle",
            "learned": 0.19,
            "learned_draws": {"red-ring": 0.72, "red-circle": 0.19, "none": 0.09},
        },
        {**row, "concept": "red-square", "learned": 1.0, "learned_draws": {"red-square": 1.0}},
        {**row, "concept": "blue-square", "learned": 0.5},
    ]  # rows before the field: skipped
    assert misses({"rows": rows}) == (
        "- red-circle: the token draws red-ring 0.72, red-circle 0.19, none 0.09"
    )


@pytest.mark.parametrize("captions", [True, False])
def test_experiment_captions_name_each_training_pictures_background(tmp_path, captions):
    """With captions (the default) a .txt beside each render names its background, in the
    pretraining captions' words, and our command reads them; the peer's folder holds only the
    pictures (diffusers' script opens every file of its folder as an image)."""
    from invokeai_ti.concepts.experiment import (
        ExperimentSettings,
        our_command,
        pictures_alone,
        render_training_images,
    )
    from invokeai_ti.concepts.judge import judge_image, load_images

    settings = ExperimentSettings(["red-triangle"], Path("model"), tmp_path, captions=captions)
    images = tmp_path / "images"
    render_training_images("red-triangle", images, settings)
    pictures_only = pictures_alone(images)
    rendered = load_images(images)
    assert [judge_image(pixels).background for _, pixels in rendered] == ["white", "gray"] * 2 + [
        "white"
    ]
    assert sorted(p.name for p in pictures_only.iterdir()) == sorted(p.name for p, _ in rendered)
    captions_written = sorted(images.glob("*.txt"))
    command = our_command(settings, images, tmp_path / "run", 10)
    if captions:
        assert [p.read_text() for p in captions_written] == [
            f"on a {judge_image(pixels).background} background\n" for _, pixels in rendered
        ]
        assert command[command.index("--caption_extension") + 1] == ".txt"
        templates = Path(command[command.index("--template_file") + 1]).read_text().splitlines()
        assert templates[0] == "a photo of a {} [filewords]" and len(templates) > 20
    else:
        assert captions_written == [] and "--caption_extension" not in command
        assert "--template_file" not in command


def test_experiment_train_background_any_draws_a_background_per_picture(tmp_path):
    """--train_background any was documented but refused ("unknown background 'any'")."""
    from invokeai_ti.concepts.experiment import ExperimentSettings, render_training_images
    from invokeai_ti.concepts.judge import judge_image, load_images
    from invokeai_ti.concepts.world import BACKGROUNDS

    settings = ExperimentSettings(["red-triangle"], Path("model"), tmp_path,
                                  train_background="any")  # fmt: skip
    render_training_images("red-triangle", tmp_path / "images", settings)
    drawn = [judge_image(pixels).background for _, pixels in load_images(tmp_path / "images")]
    assert len(drawn) == 5 and set(drawn) <= set(BACKGROUNDS) and len(set(drawn)) > 1
    assert [p.read_text() for p in sorted((tmp_path / "images").glob("*.txt"))] == [
        f"on a {b} background\n" for b in drawn
    ]


def test_experiment_judges_every_vector_of_a_multi_vector_token(tmp_path, shipped_pipeline):
    """A --num_vectors 2 token is prompted as "<t> <t>_1" with both vectors in the encoder; the
    experiment judged its first vector alone before."""
    import torch

    from invokeai_ti.concepts.experiment import load_embedding_as

    dim = shipped_pipeline.text_encoder.get_input_embeddings().weight.shape[1]
    vectors = torch.randn(2, dim, generator=torch.Generator().manual_seed(0))
    torch.save({"<t>": vectors}, tmp_path / "learned_embeds.bin")
    words = load_embedding_as(shipped_pipeline, tmp_path / "learned_embeds.bin")
    assert words == "<t> <t>_1"
    ids = shipped_pipeline.tokenizer(f"a photo of a {words}").input_ids
    table = shipped_pipeline.text_encoder.get_input_embeddings().weight
    assert len(ids) == 8 and torch.equal(table[ids[5]], vectors[0])
    assert torch.equal(table[ids[6]], vectors[1])


def test_step_files_of_a_run_are_its_own(tmp_path):
    """A step file left in the folder by an earlier, longer experiment does not join the new
    run's curve (it did: a 200-step curve showed a stale point at step 250)."""
    from invokeai_ti.concepts.peer import run_timed

    write = ("import pathlib, sys; d = pathlib.Path(sys.argv[1]); "
             "(d / 'learned_embeds-steps-2.bin').write_bytes(b'2'); "
             "(d / 'learned_embeds.bin').write_bytes(b'4')")  # fmt: skip
    (tmp_path / "learned_embeds-steps-300.bin").write_bytes(b"old")
    run = run_timed("fake", [sys.executable, "-c", write, str(tmp_path)], tmp_path, 4)
    assert [step for step, _, _ in run.step_files] == [2, 4]


def test_conditioning_bound_starts_from_the_initializers_prompt_and_frees_only_its_part():
    """examples/concepts_conditioning_bound.py: before any step each --part is exactly the
    encoder's conditioning of "a photo of a object" (a spliced vector included), and
    `after_prefix` leaves "a photo of a" alone."""
    sys.path.insert(0, str(REPO / "examples"))
    import torch
    from concepts_conditioning_bound import Conditioning

    from invokeai_ti.concepts.sampling import MODEL_DIR, load_pipeline

    pipe = load_pipeline(MODEL_DIR)
    pipe.text_encoder.requires_grad_(False)
    with torch.no_grad():
        reference = pipe.encode_prompt("a photo of a object", "cpu", 1, False)[0]
        for part in ("all", "after_prefix", "normed_rows", "vectors"):
            assert torch.allclose(Conditioning(pipe, part, 1)(), reference, atol=1e-5), part
        prefix = Conditioning(pipe, "after_prefix", 1)
        assert prefix.fixed.shape[1] == 5  # <start> a photo of a
        assert prefix.free.shape[1] == 77 - 5
        two = Conditioning(load_pipeline(MODEL_DIR), "vectors", 2)
        assert two.free.shape == (2, reference.shape[-1])
        assert two.ids[0, 5:8].tolist() == [len(pipe.tokenizer), len(pipe.tokenizer) + 1,
                                            pipe.tokenizer.eos_token_id]  # fmt: skip
