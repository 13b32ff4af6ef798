"""Which model a `--model` value names: a models.yaml name (2.3 and 3.x), a record of InvokeAI 4+'s
database (NAME or NAME:BASE), a diffusers folder, a single checkpoint file, or a hub id already in a
local cache. Resolves to a ModelSource that models/loading.py loads. No torch here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import ModelError
from invokeai_ti.invokeai import registry
from invokeai_ti.invokeai.families import TRAINABLE_BASES
from invokeai_ti.invokeai.root import absolute_path, find_root


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are: a diffusers folder or a single checkpoint file."""

    path: Path
    kind: str  # "diffusers" | "single_file"
    name: str  # what the user asked for, for messages
    base: str | None = None  # family the registry claims (sd-1, sd-2, sdxl), checked after loading
    config: Path | None = None  # single file: models.yaml `config` (diffusers folder or LDM .yaml)
    prediction_type: str | None = None  # single file: what InvokeAI 4+'s record says, if anything


def read_models_yaml(root: Path) -> dict[str, dict]:
    """ROOT/configs/models.yaml as {name: entry}; {} when there is none."""
    path = root / "configs" / "models.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ModelError(f"{path} is not valid YAML{where}: fix or remove that file.") from exc
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or binary junk
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ModelError(f"{path} cannot be read ({reason}): fix or remove that file.") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a mapping of model names: fix or remove that file.")
    # 3.x's models.yaml opens with a `__metadata__` mapping that names no model.
    entries = {
        str(name): entry
        for name, entry in data.items()
        if isinstance(entry, dict) and not str(name).startswith("__")
    }
    for name, entry in entries.items():
        for key in ("path", "weights", "config", "repo_id"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise ModelError(
                    f"{path}: entry '{name}' has {key}: {entry[key]!r}, which is not a path or "
                    "name: fix that entry."
                )
    return entries


def list_model_names(root: Path) -> list[str]:
    """The diffusers models a front end offers, as --model accepts them: models.yaml's names, then
    the database's trainable ones (NAME:BASE where one name has several bases). The front end
    reads each model's tokenizers from its folder, so single files are not offered."""
    names = [
        name
        for name, entry in read_models_yaml(root).items()
        if entry.get("format", "diffusers") == "diffusers"
    ]
    records = registry.read_main_models(root)
    for record in records:
        if record.format != "diffusers" or record.base not in TRAINABLE_BASES:
            continue
        shared = sum(other.name == record.name for other in records) > 1
        name = record.label if shared or record.name in names else record.name
        if name not in names:
            names.append(name)
    return names


def default_model_name(root: Path) -> str | None:
    """The model the registry marks `default: true`, if any."""
    return next(
        (name for name, entry in read_models_yaml(root).items() if entry.get("default")), None
    )


def resolve_model(config: TrainingConfig) -> ModelSource:
    """Turn --model into a ModelSource: models.yaml name, folder, single file, or hub id in the cache."""
    root = find_root(config.root_dir)
    name = config.model
    entries = read_models_yaml(root)
    if name in entries:
        return _source_from_yaml_entry(root, name, entries[name], config.revision)
    records = registry.find_registered(root, name)
    if records:
        return _source_from_record(root, name, records)
    path = absolute_path(Path(name))
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"--model {path} is a folder but not a diffusers pipeline (no model_index.json): "
                "point it at a diffusers model folder."
            )
        return ModelSource(path=path, kind="diffusers", name=name)
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".bin"):
            raise ModelError(
                f"--model {path} is not a .safetensors or .ckpt checkpoint or a diffusers folder."
            )
        return ModelSource(path=path, kind="single_file", name=name)
    if _looks_like_repo_id(name):
        return ModelSource(
            path=_hub_snapshot(name, config.revision, root), kind="diffusers", name=name
        )
    known = (
        ", ".join(list_model_names(root)) or f"none (no models.yaml or model database in {root})"
    )
    if name.startswith((".", "~")) or os.sep in name or "/" in name:
        raise ModelError(
            f"--model {path} does not exist: check the path, or use a model name ({known})."
        )
    raise ModelError(
        f"--model '{name}' is not a model name in models.yaml or InvokeAI's database, a folder or a "
        f"file. Known names: {known}."
    )


def _source_from_record(
    root: Path, name: str, records: list[registry.RegisteredModel]
) -> ModelSource:
    """One row of InvokeAI 4+'s models table -> a ModelSource whose base load_components checks."""
    if len(records) > 1:
        listed = "; ".join(f"{r.label} ({r.format}, {r.path})" for r in records)
        raise ModelError(
            f"--model '{name}' names {len(records)} models in InvokeAI's database: {listed}. "
            "Pass --model NAME:BASE or the model's path."
        )
    record = records[0]
    if record.base not in TRAINABLE_BASES:
        raise ModelError(
            f"--model '{name}' is a {record.base} model; this trainer trains "
            f"{', '.join(TRAINABLE_BASES)} models only: pick one of those."
        )
    kind = registry.DB_FORMATS.get(record.format)
    if kind is None:
        raise ModelError(
            f"--model '{name}' is stored as '{record.format}', which this trainer cannot load: "
            "pick a diffusers or checkpoint model."
        )
    exists = record.path.is_dir() if kind == "diffusers" else record.path.is_file()
    if not exists:
        raise ModelError(
            f"--model '{name}': InvokeAI's database points to {record.path}, which is missing: "
            "reinstall the model in InvokeAI or pass --model its path."
        )
    config_path = record.config.get("config_path")
    config = registry.path_under(root, config_path) if isinstance(config_path, str) else None
    prediction = record.config.get("prediction_type")
    return ModelSource(
        path=record.path,
        kind=kind,
        name=name,
        base=record.base,
        config=config if config is not None and config.is_file() else None,
        prediction_type=prediction if prediction in ("epsilon", "v_prediction") else None,
    )


def _source_from_yaml_entry(
    root: Path, name: str, entry: dict, revision: str | None
) -> ModelSource:
    fmt = entry.get("format", "diffusers")
    weights = entry.get("weights") or entry.get("path")  # 2.3: weights; 3.x: path
    if fmt == "diffusers":
        if entry.get("path"):
            path = _under_models(root, entry["path"])
            if not (path / "model_index.json").is_file():
                raise ModelError(
                    f"models.yaml entry '{name}' points to {path}, which is not a diffusers "
                    "folder: fix its path or install the model again."
                )
            return ModelSource(path=path, kind="diffusers", name=name)
        if entry.get("repo_id"):
            return ModelSource(
                path=_hub_snapshot(entry["repo_id"], revision, root), kind="diffusers", name=name
            )
    if fmt in ("ckpt", "checkpoint", "safetensors") and weights:
        path = _under_models(root, weights)
        if not path.is_file():
            raise ModelError(f"models.yaml entry '{name}' names {path}, which does not exist.")
        config = registry.path_under(root, entry["config"]) if entry.get("config") else None
        return ModelSource(path=path, kind="single_file", name=name, config=config)
    raise ModelError(
        f"models.yaml entry '{name}' has format '{fmt}' without a usable path or repo_id: "
        "use a diffusers model (convert it in InvokeAI's model manager) or pass a folder to --model."
    )


def _under_models(root: Path, value: str) -> Path:
    """A models.yaml model path: 2.3 wrote it relative to the root, 3.x to its models_dir."""
    settings = registry.read_settings(root)
    return registry.path_under(settings.models_dir if settings else root, value)


def _hub_snapshot(repo_id: str, revision: str | None, root: Path) -> Path:
    """A hub model already in a local cache; never downloads (training must not hang offline)."""
    from huggingface_hub import snapshot_download

    # 2.3 kept diffusers models in ROOT/models (its HF cache); the default HF cache comes next.
    for cache_dir in (root / "models", None):
        try:
            folder = snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        except Exception:  # noqa: BLE001 - any failure means "not in this cache"
            continue
        return Path(folder)
    raise ModelError(
        f"--model '{repo_id}' is not in the local Hugging Face cache and this trainer never "
        f"downloads: run `huggingface-cli download {repo_id}` (or install it in InvokeAI), "
        "then try again."
    )


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))
