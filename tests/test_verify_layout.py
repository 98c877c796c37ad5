"""The exact solver stands apart from the batch app and the ladder that use it."""

from __future__ import annotations

import ast
from pathlib import Path

SOLVER = Path(__file__).resolve().parents[1] / "certtrain" / "verify"


def test_the_solver_imports_nothing_from_the_app_or_the_ladder():
    offenders = []
    for path in sorted(SOLVER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [
                f"{path.name}: {n}" for n in names if n.startswith(("certtrain.verify_app", "certtrain.ladder"))
            ]
    assert not offenders, offenders
