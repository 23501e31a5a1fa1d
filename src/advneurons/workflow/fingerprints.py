"""Code fingerprints: a hash of exactly the package code a workflow step runs, so that editing that code
re-runs that step and nothing else.

Snakemake re-runs a `script:` rule when its script file changes, but it does not see the package the script
imports. Each rule therefore passes `code=code_version("<script>")` as a param (rules/common.smk), and
Snakemake's params trigger re-runs the rule's jobs when that fingerprint changes.

The fingerprint follows references, not imports. Starting from the names the script uses, it collects every
top-level definition of the package those names reach (functions, classes, module-level constants), through
function bodies, class bodies, default arguments and annotations, `module.attr` chains, re-exports in
`__init__.py` files and imports inside functions, and hashes their code. So:

- editing a function re-runs the steps that can call it, and no other step: a module imported for one helper
  does not drag its other functions in;
- comments, docstrings, blank lines and formatting change no fingerprint (the hash is of the syntax tree with
  docstrings removed, not of the text);
- moving a definition to another module changes nothing either: definitions are hashed by name and code, and
  import statements inside functions are left out of the hash (what they bind is followed instead).

A name bound to a whole package module that is not used as `module.attr` (passed around, or looked up with
getattr) pulls in every definition of that module: over-inclusion re-runs too much, never too little. A class
counts as a whole (all its methods). Module-level statements other than definitions, imports and the
docstring run on import, so they are included with their module.

Computing a fingerprint parses the whole package (about a second), and the workflow asks for one per step on
every parse: each dry run, each run, each cluster job. Results are therefore kept in a content-addressed cache
(`$XDG_CACHE_HOME/advneurons/fingerprints/`, else `~/.cache/...`): the key is a hash of the Python version, the
text of every package file and the script's text, so any edit, even of a comment, makes a new key, and a stale
entry can never be read. An unwritable cache directory only costs the recomputation.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE = "advneurons"
# Workflow wiring (fingerprints, running a script by hand) does not change what a step computes: what reaches the
# step is in its params, which Snakemake compares itself. Its definitions are never hashed.
WIRING = f"{PACKAGE}.workflow"
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# A reference target: ("def", module, name) for a top-level definition, ("module", module, "") for a module.
Target = tuple[str, str, str]


@dataclass
class Module:
    name: str
    is_package: bool
    definitions: dict[str, ast.AST] = field(default_factory=dict)  # name -> its top-level statement
    bindings: dict[str, Target] = field(default_factory=dict)  # imported name -> package target
    prelude: list[ast.stmt] = field(default_factory=list)  # other statements run on import


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    """Remove the docstrings of the module and of every class and function in it, in place."""
    for sub in ast.walk(tree):
        if isinstance(sub, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = sub.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                sub.body = body[1:] or [ast.Pass()]
    return tree


class _DropImports(ast.NodeTransformer):
    def visit_Import(self, node):
        return None  # removed, so that moving an import to the module's top changes nothing

    visit_ImportFrom = visit_Import


def _code_text(node: ast.AST) -> str:
    """Canonical code of a statement: its syntax tree (docstrings removed at parse), without positions, and
    with the imports inside it removed: what they bind is followed and hashed as references, and where a
    name is imported from is layout, not code."""
    if any(isinstance(sub, (ast.Import, ast.ImportFrom)) for sub in ast.walk(node)):
        node = _DropImports().visit(copy.deepcopy(node))
    return ast.dump(node, include_attributes=False)


def _assigned_names(stmt: ast.stmt) -> list[str]:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    names = []
    for target in targets:
        names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return names


class CodeIndex:
    """Every module of the package with its top-level definitions and the package names it imports."""

    def __init__(self, package_dir: Path = PACKAGE_DIR, package: str = PACKAGE):
        self.package = package
        self.modules: dict[str, Module] = {}
        self._references: dict[Target, set[Target]] = {}  # per definition, computed once
        self._code: dict[Target, str] = {}
        files = {}
        for path in sorted(Path(package_dir).rglob("*.py")):
            parts = path.relative_to(package_dir).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *parts[:-1])) if is_package else ".".join((package, *parts))
            files[name] = (path, is_package)
        self.module_names = set(files)  # known before any file is read: imports name modules
        for name, (path, is_package) in files.items():
            tree = _strip_docstrings(ast.parse(path.read_text(), str(path)))
            self.modules[name] = self._read(name, is_package, tree)

    def _read(self, name: str, is_package: bool, tree: ast.Module) -> Module:
        module = Module(name, is_package)
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                module.definitions[stmt.name] = stmt
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                for target in _assigned_names(stmt):
                    module.definitions[target] = stmt
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                module.bindings.update(self._import_bindings(stmt, name, is_package))
            elif not isinstance(stmt, ast.Pass):  # a module holding only a docstring becomes `pass`
                module.prelude.append(stmt)
        return module

    def _import_bindings(self, stmt: ast.stmt, module: str, is_package: bool) -> dict[str, Target]:
        """Names an import statement binds to package modules or definitions (other imports are ignored)."""
        out: dict[str, Target] = {}
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.name.split(".")[0] == self.package:
                    if alias.asname:
                        out[alias.asname] = ("module", alias.name, "")
                    else:  # `import advneurons.x.y` binds `advneurons`
                        out[self.package] = ("module", self.package, "")
            return out
        if stmt.level:
            base = module if is_package else module.rpartition(".")[0]
            for _ in range(stmt.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{stmt.module}" if stmt.module else base
        else:
            source = stmt.module or ""
        if source.split(".")[0] != self.package:
            return out
        for alias in stmt.names:
            if alias.name == "*":
                continue
            submodule = f"{source}.{alias.name}"
            target = ("module", submodule, "") if submodule in self.module_names else ("def", source, alias.name)
            out[alias.asname or alias.name] = target
        return out

    def resolve(self, target: Target, attrs: tuple[str, ...] = ()) -> Target | None:
        """Follow re-exports and `module.attr` chains to the definition or module a reference means."""
        for _ in range(50):  # re-export chains are short; a cycle would be a bug in the package
            kind, module, name = target
            if kind == "module":
                if module not in self.modules:
                    return None
                if not attrs:
                    return target
                head, attrs = attrs[0], attrs[1:]
                if f"{module}.{head}" in self.modules:
                    target = ("module", f"{module}.{head}", "")
                else:
                    target = ("def", module, head)
                continue
            mod = self.modules.get(module)
            if mod is None:
                return None
            if name in mod.definitions:
                return target
            if name in mod.bindings:
                target = mod.bindings[name]
                continue
            return None
        raise RecursionError(f"import cycle while resolving {target}")

    def references(self, node: ast.AST, module: str) -> set[Target]:
        """Package definitions and modules that the code of `node`, in `module`, refers to."""
        mod = self.modules.get(module) or Module(module, False)
        bindings = dict(mod.bindings)
        names: list[ast.Name] = []
        chains: list[tuple[ast.Name, tuple[str, ...]]] = []
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.append(sub)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):  # binds names for the whole definition
                bindings.update(self._import_bindings(sub, module, mod.is_package))
            if isinstance(sub, ast.Attribute):
                chain, base = [], sub
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name):
                    chains.append((base, tuple(reversed(chain))))
        found: set[Target] = set()
        module_bases = set()
        # a chain a.b.c is walked as a.b.c, then a.b: the longest chain from each base comes first
        for base, attrs in chains:
            if id(base) in module_bases:
                continue
            target = bindings.get(base.id)
            if target is not None and target[0] == "module":
                module_bases.add(id(base))
                resolved = self.resolve(target, attrs)
                if resolved is not None:
                    found.add(resolved)
        for name in names:
            if id(name) in module_bases:
                continue
            if name.id in bindings:
                resolved = self.resolve(bindings[name.id])
                if resolved is not None:
                    found.add(resolved)
            elif name.id in mod.definitions:
                found.add(("def", module, name.id))
        return found

    def closure(self, roots: set[Target]) -> set[Target]:
        """Every definition reachable from `roots`, with a whole-module reference standing for all of it."""
        seen: set[Target] = set()
        todo = list(roots)
        preludes_done: set[str] = set()
        while todo:
            target = todo.pop()
            if target in seen:
                continue
            seen.add(target)
            kind, module, name = target
            mod = self.modules[module]
            if kind == "module":  # used as a value: every definition of it may run
                todo += [("def", module, n) for n in mod.definitions]
                continue
            if target not in self._references:
                self._references[target] = self.references(mod.definitions[name], module)
            todo += list(self._references[target] - seen)
            for owner in self._owning_packages(module):
                if owner not in preludes_done:
                    preludes_done.add(owner)
                    for stmt in self.modules[owner].prelude:
                        todo += list(self.references(stmt, owner) - seen)
        return {t for t in seen if t[0] == "def"}

    @staticmethod
    def _is_wiring(module: str) -> bool:
        return module == WIRING or module.startswith(WIRING + ".")

    def _owning_packages(self, module: str) -> list[str]:
        """The module and the packages above it: importing it runs all of their module-level statements."""
        parts = module.split(".")
        return [m for i in range(1, len(parts) + 1) if (m := ".".join(parts[:i])) in self.modules]

    def fingerprint(self, roots: set[Target]) -> str:
        """Hash of the code of every definition reachable from `roots` (12 hex digits)."""
        reached = {t for t in self.closure(roots) if not self._is_wiring(t[1])}
        for target in reached - self._code.keys():
            self._code[target] = _code_text(self.modules[target[1]].definitions[target[2]])
        items = sorted((target[2], self._code[target]) for target in reached)
        for owner in sorted({o for _, m, _ in reached for o in self._owning_packages(m) if not self._is_wiring(o)}):
            items += [("<prelude>", _code_text(stmt)) for stmt in self.modules[owner].prelude]
        digest = hashlib.sha256()
        for name, text in items:
            digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        return digest.hexdigest()[:12]

    def script_roots(self, tree: ast.Module) -> set[Target]:
        """Package definitions a script (a workflow step) refers to; imported like a module at the top level."""
        scratch = f"{self.package}.__script__"
        module = Module(scratch, False)
        for stmt in ast.walk(tree):
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                module.bindings.update(self._import_bindings(stmt, scratch, False))
        self.modules[scratch] = module
        try:
            return self.references(tree, scratch)
        finally:
            del self.modules[scratch]


@lru_cache(maxsize=None)
def _index(package_dir: str) -> CodeIndex:
    return CodeIndex(Path(package_dir))


def cache_dir() -> Path:
    """Where computed fingerprints are kept (see the module docstring)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / PACKAGE / "fingerprints"


@lru_cache(maxsize=None)
def _package_digest(package_dir: str) -> str:
    """Hash of everything a fingerprint of this package can depend on but the script: the Python version
    (the syntax tree's dump changes between versions) and every package file's name and text."""
    digest = hashlib.sha256(platform.python_version().encode() + b"\0")
    for path in sorted(Path(package_dir).rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _cache_file(package_dir: str) -> Path:
    return cache_dir() / f"{_package_digest(package_dir)}.json"


@lru_cache(maxsize=None)
def _cached(package_dir: str) -> dict[str, str]:
    """The cache's entries for this package's current text (script text digest -> fingerprint)."""
    try:
        entries = json.loads(_cache_file(package_dir).read_text())
    except (OSError, ValueError, RuntimeError):  # RuntimeError: no home directory to keep a cache in
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember(package_dir: str, key: str, value: str) -> None:
    entries = _cached(package_dir)
    entries[key] = value
    try:  # write-then-rename: parallel parses (cluster jobs) never read half a file
        path = _cache_file(package_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries, sort_keys=True))
        tmp.replace(path)
    except (OSError, RuntimeError):
        pass


def script_fingerprint(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> str:
    """Fingerprint of the package code that the workflow script `script` runs (not of the script's own
    text, which Snakemake tracks itself). Served from the content-addressed cache when it holds it."""
    package_dir = str(package_dir)
    text = Path(script).read_text()
    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    if key in _cached(package_dir):
        return _cached(package_dir)[key]
    index = _index(package_dir)
    value = index.fingerprint(index.script_roots(ast.parse(text, str(script))))
    _remember(package_dir, key, value)
    return value


def reachable_definitions(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> list[str]:
    """"module:name" of every package definition the script can run, sorted (what its fingerprint hashes)."""
    index = _index(str(package_dir))
    roots = index.script_roots(ast.parse(Path(script).read_text(), str(script)))
    return sorted(f"{m}:{n}" for _, m, n in index.closure(roots))


if __name__ == "__main__":  # python -m advneurons.workflow.fingerprints workflow_scripts/<step>.py ...
    import sys

    for script_path in sys.argv[1:]:
        print(f"{script_path}: {script_fingerprint(script_path)}")
        for definition in reachable_definitions(script_path):
            print(f"  {definition}")
