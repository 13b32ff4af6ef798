"""The concept world: coloured shapes on plain backgrounds, rendered deterministically from a seed
at 32 px, and the captions that name them (every caption names the background)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invokeai_ti.errors import UserError

SIZE = 32
COLOURS = {"red": (220, 35, 35), "green": (35, 170, 55), "blue": (35, 75, 230),
           "yellow": (245, 215, 25)}  # fmt: skip
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
NAMED_SHAPES = ("circle", "square", "triangle")
# The ring is never named: its captions say "shape", a word also used for a third of the named
# shapes, so no caption word draws rings alone and only inversion can find a word for them (the
# paper's claim).
UNNAMED_SHAPES = ("ring",)
SHAPES = NAMED_SHAPES + UNNAMED_SHAPES
GENERIC_SHAPE_WORD = "shape"
GENERIC_SHARE = 1 / 3
# Pretraining may also say a round thing called "shape" is round (`round_share` of the times; the
# shipped model: never). "round" fits circles too, so it is a description, not a name; it gives
# the model a conditioning that leans to rings for inversion to find (1 / (1 + generic_share) of
# "round {colour} shape" pictures are rings), where "shape" alone leans to none.
ROUND_SHAPES = ("circle", "ring")
ROUND_WORD = "round"
CONCEPTS = tuple(f"{colour}-{shape}" for shape in SHAPES for colour in COLOURS)


@dataclass(frozen=True)
class Scene:
    """What one picture shows; `caption()` is how pretraining names it."""

    colour: str
    shape: str
    background: str
    diameter: int  # px, the shape's bounding box side
    cx: float
    cy: float

    @property
    def concept(self) -> str:
        return f"{self.colour}-{self.shape}"

    def subject(self, generic: bool = False, round_word: bool = False,
                round_named: bool = False) -> str:  # fmt: skip
        """'red circle' or, for the unnamed ring (and `generic` named shapes), 'red shape';
        `round_word` puts 'round' before a generic circle or ring ('round red shape'), and with
        `round_named` before a named circle too ('round red circle')."""
        named = not generic and self.shape not in UNNAMED_SHAPES
        said_round = round_word and self.shape in ROUND_SHAPES and (round_named or not named)
        word = self.shape if named else GENERIC_SHAPE_WORD
        return f"{ROUND_WORD + ' ' if said_round else ''}{self.colour} {word}"


def nearest_caption(concept: str, round_word: bool = False) -> str:
    """The caption words that draw `concept` most often, the experiment's ceiling: its name
    ('red circle'), or for the unnamed ring 'red shape' ('round red shape' for a model pretrained
    with `round_word` captions)."""
    colour, shape = parse_concept(concept)
    return Scene(colour, shape, "white", 0, 0, 0).subject(round_word=round_word)


def is_named(concept: str) -> bool:
    return parse_concept(concept)[1] in NAMED_SHAPES


def parse_concept(concept: str) -> tuple[str, str]:
    """'red-circle' -> ('red', 'circle'); a one-line UserError naming the choices otherwise."""
    colour, _, shape = concept.partition("-")
    if colour not in COLOURS or shape not in SHAPES:
        raise UserError(
            f"unknown concept {concept!r}: choose one of {', '.join(CONCEPTS)} "
            "(`python -m invokeai_ti.concepts list`)."
        )
    return colour, shape


def random_scene(rng: random.Random, concept: str | None = None,
                 background: str | None = None) -> Scene:  # fmt: skip
    """A scene drawn from `rng`: size 16-22 px, centre within 3 px of the middle."""
    if concept is None:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    else:
        colour, shape = parse_concept(concept)
    background = background or rng.choice(list(BACKGROUNDS))
    diameter = rng.randint(16, 22)
    cx, cy = SIZE / 2 + rng.uniform(-3, 3), SIZE / 2 + rng.uniform(-3, 3)
    return Scene(colour, shape, background, diameter, cx, cy)


def render(scene: Scene) -> np.ndarray:
    """[32, 32, 3] uint8, drawn at 4x and box-filtered down so edges are antialiased."""
    from PIL import Image, ImageDraw

    k = 4
    image = Image.new("RGB", (SIZE * k, SIZE * k), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    r, cx, cy, fill = scene.diameter * k / 2, scene.cx * k, scene.cy * k, COLOURS[scene.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:  # ring: the hole is half the diameter, wide enough to survive the VAE at 32 px
        draw.ellipse(box, fill=fill)
        h = r / 2
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=BACKGROUNDS[scene.background])
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BOX))


def render_concept(concept: str, folder: Path, count: int, seed: int,
                   background: str | None = None) -> list[Path]:  # fmt: skip
    """Write `count` PNGs of `concept` (backgrounds drawn unless given) into `folder`."""
    from PIL import Image

    parse_concept(concept)
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}.")
    if background is not None and background not in BACKGROUNDS:
        raise UserError(
            f"unknown background {background!r}: choose one of {', '.join(BACKGROUNDS)}."
        )
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        scene = random_scene(rng, concept, background)
        path = folder / f"{concept}-{seed}-{i:04d}.png"
        Image.fromarray(render(scene)).save(path)
        paths.append(path)
    return paths


def caption(scene: Scene, rng: random.Random, templates: list[str],
            generic_share: float = GENERIC_SHARE, round_share: float = 0.0,
            round_named: bool = False) -> str:  # fmt: skip
    """A pretraining caption: 'X on a Y background' in a random training template, one time in
    four without a template; named shapes are called 'shape' `generic_share` of the time, and a
    round thing called 'shape' (with `round_named`, any round thing) is said to be round
    `round_share` of the time."""
    generic = scene.shape in NAMED_SHAPES and rng.random() < generic_share
    # No draw when round_share is 0: the shipped model's captions come from the same stream.
    round_word = round_share > 0 and rng.random() < round_share
    text = f"{scene.subject(generic, round_word, round_named)} on a {scene.background} background"
    if rng.random() < 0.25:
        return f"a {text}"
    return rng.choice(templates).format(text)
