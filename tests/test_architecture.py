"""The shape of the package, as tests: import rules (import-linter), ruff's lint and format, module
sizes, a docstring on every subpackage, the training loop and setup() within a screenful, no test
hooks in the package."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "invokeai_ti"
MODULES = sorted(PACKAGE.rglob("*.py"))


def logic_lines(source: str) -> int:
    """Lines that hold code: not blank, not only a comment, not a docstring."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                              tokenize.DEDENT, tokenize.ENDMARKER):  # fmt: skip
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


def test_import_contracts_hold():
    """setup.cfg's [importlinter] contracts: layers, the torch-free floor, no cycles."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache", "setup.cfg"], cwd=PACKAGE.parent,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_tree_is_ruff_clean():
    """The style guide's format and lint rules (ruff.toml) on every Python file git does not
    ignore: a change that drifts from them fails here, not in a reviewer's later clean-up."""
    root = PACKAGE.parent
    for command in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=root,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"


def test_every_module_stays_under_400_lines():
    sizes = {str(m.relative_to(PACKAGE)): len(m.read_text().splitlines()) for m in MODULES}
    assert {name: n for name, n in sizes.items() if n >= 400} == {}


def test_every_subpackage_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"{init} needs a paragraph docstring"


def test_the_loop_and_setup_fit_on_a_screen():
    loop = (PACKAGE / "train" / "loop.py").read_text()
    assert logic_lines(loop) <= 150
    setup_source = (PACKAGE / "train" / "setup.py").read_text()
    setup_fn = next(n for n in ast.parse(setup_source).body
                    if isinstance(n, ast.FunctionDef) and n.name == "setup")  # fmt: skip
    body = "\n".join(setup_source.splitlines()[setup_fn.lineno - 1 : setup_fn.end_lineno])
    assert logic_lines(body) <= 60


def test_the_package_reads_no_test_switches():
    """Tests reach in from their side (fixtures, monkeypatch, a sitecustomize on PYTHONPATH)."""
    hooks = [f"{m.relative_to(PACKAGE)}:{i}" for m in MODULES
             for i, line in enumerate(m.read_text().splitlines(), 1)
             if re.search(r"environ.*(TEST|PAUSE)|_TEST_", line)]  # fmt: skip
    assert hooks == []


def test_logic_lines_counts_code_only():
    source = '"""Doc\nstring."""\n\n# a comment\nx = 1  # why\n\ndef f():\n    """Doc."""\n    return (1,\n            2)\n'
    assert logic_lines(source) == 4  # x = 1, def f, and the two lines of the return
