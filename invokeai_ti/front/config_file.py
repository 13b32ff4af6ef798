"""--config FILE on the command line: the file's values replace the flags' defaults, then the
command line is parsed again, so a flag given there wins over the file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from invokeai_ti.errors import UserError
from invokeai_ti.files.config_file import check_values, read_config_file


def apply_config_file(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, path: Path
) -> argparse.Namespace:
    """The namespace of `argv` over the defaults `path` sets. A bad file is a UserError, which the
    CLI prints as one line (argparse has no room for it)."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    aliases = {opt.lstrip("-"): a.dest for a in actions.values() for opt in a.option_strings
               if opt.lstrip("-") != a.dest}  # fmt: skip
    values = check_values(path, read_config_file(path), aliases)
    for name, value in values.items():
        choices = actions[name].choices if name in actions else None
        items = value if isinstance(value, list) else [value]
        if choices and any(item not in choices for item in items):
            raise UserError(f"--config {path}: {name} {value!r} is not one of: "
                            f"{', '.join(map(str, choices))}.")  # fmt: skip
    # An appending flag would add to the file's list instead of replacing it: filled in after.
    appended = {
        n: v for n, v in values.items() if isinstance(actions.get(n), argparse._AppendAction)
    }
    parser.set_defaults(**{n: v for n, v in values.items() if n not in appended}, config=path)
    args = parser.parse_args(argv)
    for name, value in appended.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.config = path
    return args
