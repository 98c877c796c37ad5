"""The package imports without cycles: every module alone, first, in a fresh interpreter's
certtrain namespace; and no certtrain import hides inside a function."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import certtrain

ROOT = Path(certtrain.__file__).resolve().parent
MODULES = sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="certtrain."))

# One interpreter for all (torch is imported once); before each module every certtrain module
# is dropped, so each is imported first, as a user's `import certtrain.x` would.
PROBE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "certtrain" or m.startswith("certtrain.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{name}: {type(err).__name__}: {err}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first():
    assert len(MODULES) > 40
    result = subprocess.run([sys.executable, "-c", PROBE, *MODULES], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_no_certtrain_import_inside_a_function():
    hidden = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("certtrain"):
                        hidden.append(f"{path.relative_to(ROOT.parent)}:{inner.lineno} {inner.module}")
    assert hidden == []
