"""The experiment's outputs: results JSON, a markdown table of every concept (failures included)
with the bars of issue 17, recovery over steps, and one picture of all concepts' samples."""

from __future__ import annotations

import json
from pathlib import Path


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _seconds(value: float | None, bound: float | None = None) -> str:
    if value is not None:
        return f"{value:.0f} s"
    return f"not reached in {bound:.0f} s" if bound is not None else "not reached"


def checks(row: dict) -> dict[str, bool]:
    """Issue 17's "Must hold" for one row (peer checks only when the peer ran)."""
    named = row["named"]
    result = {"recovery": row["learned"] >= row["recovery_bar"]}
    if named:
        result["initializer <= 0.2"] = row["initializer"] <= 0.2
        result["editability"] = row["learned_edit"] >= 0.8 * row["caption_edit"]
    if "peer" in row:
        result["final >= peer"] = row["learned"] >= row["peer"]
        ours, theirs = row["ours_seconds_to_90pct"], row["peer_seconds_to_90pct"]
        bound = theirs if theirs is not None else row["peer_wall_seconds"]
        # When the peer never reaches the mark, its whole run is a lower bound on its time.
        result["time <= 0.5x peer"] = ours is not None and ours <= 0.5 * bound
    return result


def table(results: dict) -> str:
    rows = results["rows"]
    lines = [
        "| concept | caption (ceiling) | initializer | ours | diffusers script | edit: caption "
        "| edit: ours | edit: script | bar | ours: time to 90 % | script: time to 90 % | holds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        failed = [name for name, ok in checks(r).items() if not ok]
        words = r.get("caption_words", "shape")  # rows before 2026-12-06b had no such field
        caption = _rate(r["caption"]) + ("" if r["named"] else f" (unnamed: '{words}')")
        lines.append(
            f"| {r['concept']} | {caption} | {_rate(r['initializer'])} | {_rate(r['learned'])} "
            f"| {_rate(r.get('peer'))} | {_rate(r['caption_edit'])} | {_rate(r['learned_edit'])} "
            f"| {_rate(r.get('peer_edit'))} | {r['recovery_bar']:.2f} "
            f"| {_seconds(r['ours_seconds_to_90pct'], r['ours_wall_seconds'])} "
            f"| {_seconds(r.get('peer_seconds_to_90pct'), r.get('peer_wall_seconds'))} "
            f"| {'yes' if not failed else 'no: ' + ', '.join(failed)} |"
        )
    return "\n".join(lines)


def misses(results: dict) -> str:
    """What the learned token draws where it misses its recovery bar: the judge's three most
    common readings of "a photo of a <t>" ('none': no concept it can name)."""
    lines = []
    for r in results["rows"]:
        if "learned_draws" in r and not checks(r)["recovery"]:
            drawn = ", ".join(f"{name} {share:.2f}" for name, share in r["learned_draws"].items())
            lines.append(f"- {r['concept']}: the token draws {drawn}")
    return "\n".join(lines)


def curves(results: dict) -> str:
    lines = []
    for r in results["rows"]:
        for name in ("ours", "peer"):
            points = r.get(f"{name}_curve")
            if points:
                text = ", ".join(f"{p['step']}: {p['rate']:.2f} ({p['seconds']:.0f} s)"
                                 for p in points)  # fmt: skip
                lines.append(f"- {r['concept']}, {'ours' if name == 'ours' else 'script'}: {text}")
    return "\n".join(lines)


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """results.json, results.md and samples.png (each concept: training pictures, caption,
    learned token, learned token on the edit background, and the script's token if run)."""
    import numpy as np
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2))
    md_path = out_dir / "results.md"
    missed = misses(results)
    sections = [table(results)] + (["Where the token misses:", missed] if missed else [])
    sections += ["Recovery over steps (step: rate (seconds since launch)):", curves(results)]
    md_path.write_text("\n\n".join(sections) + "\n")
    pictures = [np.asarray(Image.open(out_dir / r["concept"] / "samples.png"))
                for r in results["rows"]]  # fmt: skip
    width = max(p.shape[1] for p in pictures)
    padded = [np.pad(p, ((0, 6), (0, width - p.shape[1]), (0, 0)), constant_values=255)
              for p in pictures]  # fmt: skip
    picture_path = out_dir / "samples.png"
    Image.fromarray(np.concatenate(padded)).save(picture_path)
    return [json_path, md_path, picture_path]
