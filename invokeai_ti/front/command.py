"""The shell command a TrainingConfig equals: the inverse of cli.parse_config, shown by the GUI so
a run started from the form can be repeated (or scripted) from the command line."""

from __future__ import annotations

import dataclasses
import shlex

from invokeai_ti.config import TrainingConfig

# Flags whose name differs from their field's name (cli.py).
FLAG_NAMES = {"copy_to_embeddings": "copy"}


def config_to_argv(config: TrainingConfig) -> list[str]:
    """Flags that rebuild `config` through cli.parse_config: one per field that differs from its
    default, as `--flag=value` so negative numbers and empty strings survive."""
    defaults = TrainingConfig()
    argv = []
    for f in dataclasses.fields(TrainingConfig):
        value = getattr(config, f.name)
        # --config is left out: every value it gave is spelled out, and one reset to its default
        # must stay so.
        if f.name in ("front_end", "config") or value == getattr(defaults, f.name):
            continue
        flag = FLAG_NAMES.get(f.name, f.name)
        if value is None:  # a field whose default is a value: 'none' (--evaluation_budget none)
            argv.append(f"--{flag}=none")
        elif isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list):
            argv.extend(f"--{flag}={item}" for item in value)
        else:
            argv.append(f"--{flag}={value}")
    return argv


def command_line(config: TrainingConfig) -> str:
    """The copyable shell command; a hub token is not echoed to the terminal."""
    argv = config_to_argv(dataclasses.replace(config, hub_token=None))
    return shlex.join(["invokeai-ti", *argv]) + ("  # plus --hub_token" if config.hub_token else "")
