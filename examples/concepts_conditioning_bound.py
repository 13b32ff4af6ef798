"""How far can any text conditioning take the frozen concept-world UNet towards a concept?

Textual inversion can only reach conditionings the frozen text encoder makes from new token
vectors. This script optimises, with the diffusion loss on the experiment's 5 training renders
(no captions), one of three things and then samples 32 images at the experiment's seeds and
settings and judges them:

- `--part all`: the whole [77, dim] conditioning of "a photo of a object" (the experiment's
  initializer), skipping the encoder: the bound of any prompt;
- `--part after_prefix`: only its rows from "object" on, the rows a new token can change;
- `--part normed_rows`: those rows before the encoder's final layer norm, so each stays a row the
  encoder can output (a layer norm's output) but is free of the others;
- `--part vectors --vectors K`: K new input vectors for "a photo of a <t0> .. <tK-1>" through the
  frozen encoder, free of any norm: textual inversion itself, with nothing held.

If `all` reaches a bar and `vectors` does not, the encoder, not the UNet, is what stops inversion.

    python examples/concepts_conditioning_bound.py --concept blue-ring red-ring --steps 2000 \
        --learning_rate 0.3 --part all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def training_latents(pipe, concept: str, seed: int, folder: Path) -> torch.Tensor:
    """The experiment's 5 training renders (its own renderer, without captions), as VAE latents."""
    from invokeai_ti.concepts.experiment import ExperimentSettings, render_training_images
    from invokeai_ti.concepts.judge import load_images

    settings = ExperimentSettings([concept], Path(), folder, seed=seed, captions=False)
    render_training_images(concept, folder, settings)
    pixels = np.stack([image for _, image in load_images(folder)])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


PREFIX = "a photo of a"
INITIALIZER = "object"


class SplicedTable(torch.nn.Module):
    def __init__(self, table: torch.Tensor, free: torch.nn.Parameter) -> None:
        super().__init__()
        self.table, self.free = table.detach(), free

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, torch.cat([self.table, self.free]))


class Conditioning(torch.nn.Module):
    """What `--part` frees, and the [1, 77, dim] conditioning it makes."""

    def __init__(self, pipe, part: str, vectors: int) -> None:
        super().__init__()
        self.pipe, self.part = pipe, part
        tokenizer = pipe.tokenizer
        if part == "vectors":
            table = pipe.text_encoder.get_input_embeddings().weight
            start = table[tokenizer.convert_tokens_to_ids(INITIALIZER + "</w>")]
            self.free = torch.nn.Parameter(start.detach().repeat(vectors, 1))
            ids = tokenizer(PREFIX, padding="max_length", max_length=tokenizer.model_max_length,
                            return_tensors="pt").input_ids[0].tolist()  # fmt: skip
            end = ids.index(tokenizer.eos_token_id)
            new = [len(table) + i for i in range(vectors)]
            # CLIP's encoder takes ids only: look the new ids up in the vocabulary + the free rows.
            pipe.text_encoder.set_input_embeddings(SplicedTable(table, self.free))
            ids = (ids[:end] + new + ids[end:])[: tokenizer.model_max_length]
            self.ids = torch.tensor([ids])
            return
        ids = tokenizer(f"{PREFIX} {INITIALIZER}", padding="max_length", return_tensors="pt",
                        max_length=tokenizer.model_max_length).input_ids  # fmt: skip
        output = pipe.text_encoder(ids, output_hidden_states=True)
        # normed_rows frees the states the final layer norm reads (the last hidden_states entry)
        encoded = output.hidden_states[-1] if part == "normed_rows" else output.last_hidden_state
        self.first_free = 0 if part == "all" else len(tokenizer(PREFIX).input_ids) - 1
        self.fixed = output.last_hidden_state[:, : self.first_free].detach()
        self.free = torch.nn.Parameter(encoded[:, self.first_free :].detach().clone())

    def forward(self) -> torch.Tensor:
        if self.part == "normed_rows":
            encoder = self.pipe.text_encoder
            rows = getattr(encoder, "text_model", encoder).final_layer_norm(self.free)
            return torch.cat([self.fixed, rows], dim=1)
        if self.part != "vectors":
            return torch.cat([self.fixed, self.free], dim=1)
        return self.pipe.text_encoder(self.ids).last_hidden_state


def optimise(pipe, latents: torch.Tensor, conditioning: Conditioning, steps: int, lr: float,
             batch_size: int, seed: int) -> torch.Tensor:  # fmt: skip
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW([conditioning.free], lr=lr, weight_decay=0.0)
    # cosine to 0 without warm-up, the experiment's --lr_scheduler for its token
    schedule = get_cosine_schedule_with_warmup(optimizer, 0, steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(latents), (batch_size,), generator=generator)
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,),
                          generator=generator)  # fmt: skip
        xt = noise_scheduler.add_noise(x0, noise, t)
        predicted = pipe.unet(xt, t, conditioning().expand(batch_size, -1, -1)).sample
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return conditioning()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", nargs="+", required=True)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_samples", type=int, default=32)
    parts = ("all", "after_prefix", "normed_rows", "vectors")
    parser.add_argument("--part", choices=parts, default="all")
    parser.add_argument("--vectors", type=int, default=1, help="new vectors, with --part vectors")
    parser.add_argument("--out", type=Path, default=Path("/tmp/conditioning-bound"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from invokeai_ti.concepts import sampling
    from invokeai_ti.concepts.judge import judge_image, summarize

    rows = []
    for concept in args.concept:
        began = time.perf_counter()
        # Loaded afresh for each concept: --part vectors splices the encoder's table.
        pipe = sampling.load_pipeline(args.model or sampling.MODEL_DIR)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
        latents = training_latents(pipe, concept, args.seed, args.out / concept)
        free = Conditioning(pipe, args.part, args.vectors)
        conditioning = optimise(pipe, latents, free, args.steps, args.learning_rate,
                                args.batch_size, args.seed)  # fmt: skip
        images = sampling.sample(pipe, conditioning, args.num_samples, args.seed)
        drawn = summarize([judge_image(image) for image in images])["concept"]
        row = {
            "concept": concept,
            "part": args.part,
            "vectors": args.vectors if args.part == "vectors" else None,
            "recovery": drawn.get(concept, 0.0),
            "draws": dict(list(drawn.items())[:4]),  # shares of the samples, most drawn first
            "seconds": round(time.perf_counter() - began),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = "python examples/concepts_conditioning_bound.py " + " ".join(sys.argv[1:])
    (args.out / "bound.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    print("command:", command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
