"""Fingerprints of the package code a workflow step runs, so that code changes re-run that step.

Snakemake's code trigger sees only a rule's script file, not the package it imports. Each rule therefore
passes `code_fingerprint("advneurons.<module>")` as a param: a hash of that module's source and of every
package module it imports, directly or transitively. Editing any of them changes the param, and
Snakemake's params trigger re-runs the rule (and, through newer outputs, everything downstream).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PACKAGE = "advneurons"


def _module_file(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module named {name!r}")
    return Path(spec.origin)


def package_imports(name: str) -> set[str]:
    """Package modules imported by module `name` (absolute or relative imports, at any depth in the file)."""
    tree = ast.parse(_module_file(name).read_text())
    is_package = _module_file(name).name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                target = f"{parent}.{node.module}" if node.module else parent
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            # `from . import checkpoint` names modules; `from .data import load_split` names a module.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if importlib.util.find_spec(target) and _is_module(candidate) else target)
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def module_closure(name: str) -> list[str]:
    """`name` and every package module it reaches through imports, sorted."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(package_imports(current) - seen)
    return sorted(seen)


@lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """Hash of the source of `modules` and everything in the package they import (12 hex digits)."""
    digest = hashlib.sha256()
    for name in sorted({m for module in modules for m in module_closure(module)}):
        digest.update(name.encode())
        digest.update(_module_file(name).read_bytes())
        if name == f"{PACKAGE}.config":  # the schema's defaults shape every parameter
            digest.update((_module_file(name).parent / "config.schema.yaml").read_bytes())
    return digest.hexdigest()[:12]
