"""Code fingerprints hash exactly the package code a workflow step runs (advneurons.workflow.fingerprints).

The first tests build small packages in a temporary folder and check the rules one by one; the last ones edit a
copy of the real package and check which workflow steps see their fingerprint change, and the last three the
cache that keeps computed fingerprints.
"""

import ast
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from advneurons.workflow import fingerprints
from advneurons.workflow.fingerprints import CodeIndex, reachable_definitions, script_fingerprint
from workflow_helpers import ROOT, edit_definition

SCRIPTS = ROOT / "workflow_scripts"
PACKAGE = ROOT / "src" / "advneurons"


def write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "advneurons"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (pkg / "__init__.py").touch()
    return pkg


def fingerprint(pkg: Path, script: str) -> str:
    index = CodeIndex(pkg)
    return index.fingerprint(index.script_roots(ast.parse(textwrap.dedent(script))))


BASE = {
    "util.py": """
        '''Helpers.'''
        SCALE = 2

        def double(x):
            '''Twice x.'''
            return SCALE * x  # scaled

        def unrelated(x):
            return x - 1
        """,
    "steps.py": """
        from . import util
        from .util import double

        def step_a(x):
            return double(x)

        def step_b(x):
            return util.unrelated(x)

        class Runner:
            def run(self, x):
                return step_a(x)
        """,
}
BASE = {name: textwrap.dedent(text) for name, text in BASE.items()}
SCRIPT_A = "from advneurons.steps import step_a\nstep_a(1)\n"
SCRIPT_B = "from advneurons import steps\nsteps.step_b(1)\n"


def edited(tmp_path, name, **changes):
    files = dict(BASE)
    files.update(changes)
    return write_package(tmp_path / name, files)


def test_a_step_hashes_what_it_calls_and_nothing_else(tmp_path):
    before = write_package(tmp_path / "before", BASE)
    after = edited(tmp_path, "after", **{"util.py": BASE["util.py"].replace("x - 1", "x - 2")})
    # step_b calls util.unrelated (reached through a module attribute); step_a never does
    assert fingerprint(before, SCRIPT_A) == fingerprint(after, SCRIPT_A)
    assert fingerprint(before, SCRIPT_B) != fingerprint(after, SCRIPT_B)


def test_constants_and_transitive_calls_count(tmp_path):
    before = write_package(tmp_path / "before", BASE)
    after = edited(tmp_path, "after", **{"util.py": BASE["util.py"].replace("SCALE = 2", "SCALE = 3")})
    assert fingerprint(before, SCRIPT_A) != fingerprint(after, SCRIPT_A)
    assert fingerprint(before, SCRIPT_B) == fingerprint(after, SCRIPT_B)


def test_comments_docstrings_and_formatting_change_nothing(tmp_path):
    before = write_package(tmp_path / "before", BASE)
    text = BASE["util.py"].replace("'''Twice x.'''", "'''Two times x, documented at length.'''")
    text = text.replace("# scaled", "# multiplied by the scale").replace("SCALE * x", "SCALE*x")
    text = text.replace("'''Helpers.'''", "'''Small helpers.'''\n\n\n")
    after = edited(tmp_path, "after", **{"util.py": text})
    for script in (SCRIPT_A, SCRIPT_B):
        assert fingerprint(before, script) == fingerprint(after, script)


def test_moving_a_definition_to_another_module_changes_nothing(tmp_path):
    before = write_package(tmp_path / "before", BASE)
    moved = {
        "util.py": "SCALE = 2\n\ndef unrelated(x):\n    return x - 1\n",
        "maths/__init__.py": "from .double import double\n",
        "maths/double.py": "from ..util import SCALE\n\ndef double(x):\n    return SCALE * x\n",
        "steps.py": BASE["steps.py"].replace("from .util import double", "from .maths import double"),
    }
    after = edited(tmp_path, "after", **moved)
    assert fingerprint(before, SCRIPT_A) == fingerprint(after, SCRIPT_A)


def test_imports_inside_functions_are_followed(tmp_path):
    files = dict(BASE, **{"late.py": "def step_c(x):\n    from .util import unrelated\n    return unrelated(x)\n"})
    before = write_package(tmp_path / "before", files)
    files["util.py"] = BASE["util.py"].replace("x - 1", "x - 2")
    after = write_package(tmp_path / "after", files)
    script = "from advneurons.late import step_c\nstep_c(0)\n"
    assert fingerprint(before, script) != fingerprint(after, script)


def test_moving_an_import_out_of_a_function_changes_nothing(tmp_path):
    late = "def step_c(x):\n    from .util import unrelated\n    return unrelated(x)\n"
    hoisted = "from .util import unrelated\n\n\ndef step_c(x):\n    return unrelated(x)\n"
    before = write_package(tmp_path / "before", dict(BASE, **{"late.py": late}))
    after = write_package(tmp_path / "after", dict(BASE, **{"late.py": hoisted}))
    script = "from advneurons.late import step_c\nstep_c(0)\n"
    assert fingerprint(before, script) == fingerprint(after, script)


def test_a_class_counts_whole_and_a_module_used_as_a_value_counts_whole(tmp_path):
    before = write_package(tmp_path / "before", BASE)
    after = edited(tmp_path, "after", **{"util.py": BASE["util.py"].replace("SCALE * x", "SCALE + x")})
    # Runner.run calls step_a, which calls util.double
    assert fingerprint(before, "from advneurons.steps import Runner\nRunner().run(1)\n") != fingerprint(
        after, "from advneurons.steps import Runner\nRunner().run(1)\n")
    # a module handed around (getattr, registries) may run any of its definitions
    script = "from advneurons import util\nhandler = util\n"
    assert fingerprint(before, script) != fingerprint(after, script)


def test_module_level_statements_run_on_import(tmp_path):
    files = dict(BASE, **{"util.py": BASE["util.py"] + "\nprint('configured')\n"})
    before = write_package(tmp_path / "before", files)
    files["util.py"] = BASE["util.py"] + "\nprint('configured differently')\n"
    after = write_package(tmp_path / "after", files)
    assert fingerprint(before, SCRIPT_A) != fingerprint(after, SCRIPT_A)


# --- the real package: edit one definition in a copy and see which workflow steps it re-runs ---------------

def all_fingerprints(pkg: Path) -> dict[str, str]:
    return {path.stem: script_fingerprint(path, pkg) for path in sorted(SCRIPTS.glob("*.py"))}


def edit_copy(tmp_path: Path, name: str, docstring_only: bool = False) -> Path:
    """A copy of the package with a line of code (or only the docstring) of definition `name` changed."""
    pkg = tmp_path / "advneurons"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    edit_definition(pkg, name, docstring_only)
    return pkg


@pytest.fixture(scope="module")
def real_fingerprints():
    return all_fingerprints(PACKAGE)


# definition edited -> the workflow steps that run it (and so must re-run)
CODE_EDITS = {
    "attack_pairs": {"attack_pairs"},  # pairs: making a pair set
    "pair_ratios": {"sensitivity_ratios"},  # SNS ratios of one pair
    "mean_abs_deviation": {"psn_deviation"},  # PSN analysis: activation deviation
    # C&W: every step that can run an attack from the catalog (run_attack); not those that only describe
    # attacks (robustness_table) or run one PGD themselves (targeted_pairs)
    "cw_l2": {"attack_pairs", "evaluate_attack", "ig_defense_analysis", "meansparse_model", "pgd_sweep",
              "sensitivity_ratios", "suppression_study"},
}


@pytest.mark.parametrize("name", list(CODE_EDITS))
def test_editing_package_code_changes_exactly_the_steps_that_run_it(tmp_path, real_fingerprints, name):
    after = all_fingerprints(edit_copy(tmp_path, name))
    changed = {step for step in real_fingerprints if after[step] != real_fingerprints[step]}
    assert changed == CODE_EDITS[name]


@pytest.mark.parametrize("name", ["attack_pairs", "cw_l2", "train_model", "psn_scores"])
def test_a_docstring_edit_changes_no_fingerprint(tmp_path, real_fingerprints, name):
    assert all_fingerprints(edit_copy(tmp_path, name, docstring_only=True)) == real_fingerprints


def test_training_and_psn_scoring_do_not_hash_attack_or_pair_code():
    train = {d.split(":")[1] for d in reachable_definitions(SCRIPTS / "train_model.py")}
    scores = {d.split(":")[1] for d in reachable_definitions(SCRIPTS / "psn_scores.py")}
    assert "pgd_linf" in train  # PAT trains on PGD examples
    assert not {"cw_l2", "attack_pairs", "generate_pairs", "autoattack"} & (train | scores)


# --- the content-addressed cache --------------------------------------------------------------------------

@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for cached in (fingerprints._package_digest, fingerprints._cached, fingerprints._index):
        cached.cache_clear()
    yield tmp_path / "cache" / "advneurons" / "fingerprints"
    for cached in (fingerprints._package_digest, fingerprints._cached, fingerprints._index):
        cached.cache_clear()


def test_a_cached_fingerprint_is_the_computed_one_and_is_read_back(tmp_path, fresh_cache):
    pkg = write_package(tmp_path / "pkg", BASE)
    script = tmp_path / "step.py"
    script.write_text(SCRIPT_A)
    cold = script_fingerprint(script, pkg)
    assert cold == fingerprint(pkg, SCRIPT_A)
    (cache_file,) = fresh_cache.glob("*.json")
    # a new process (caches cleared) reads the file: plant a value there to see that it is what is served
    entries = json.loads(cache_file.read_text())
    assert list(entries.values()) == [cold]
    cache_file.write_text(json.dumps({key: "planted" for key in entries}))
    fingerprints._cached.cache_clear()
    assert script_fingerprint(script, pkg) == "planted"


def test_any_edit_of_the_package_or_the_script_makes_a_new_cache_key(tmp_path, fresh_cache):
    pkg = write_package(tmp_path / "pkg", BASE)
    script = tmp_path / "step.py"
    script.write_text(SCRIPT_A)
    first = script_fingerprint(script, pkg)
    # a comment changes no fingerprint but does change the package's text: a new cache file, the same value
    commented = write_package(tmp_path / "commented", dict(BASE, **{"util.py": BASE["util.py"] + "# note\n"}))
    assert script_fingerprint(script, commented) == first
    assert len(list(fresh_cache.glob("*.json"))) == 2
    # a code edit: computed anew, never served from the earlier entry
    edited_pkg = edited(tmp_path, "edited", **{"util.py": BASE["util.py"].replace("SCALE = 2", "SCALE = 3")})
    assert script_fingerprint(script, edited_pkg) == fingerprint(edited_pkg, SCRIPT_A) != first
    # the script's own text is part of the key
    script.write_text(SCRIPT_B)
    assert script_fingerprint(script, pkg) == fingerprint(pkg, SCRIPT_B)


def test_an_unwritable_cache_only_costs_the_recomputation(tmp_path, fresh_cache):
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text("a file where the cache directory should be")
    pkg = write_package(tmp_path / "pkg", BASE)
    script = tmp_path / "step.py"
    script.write_text(SCRIPT_A)
    assert script_fingerprint(script, pkg) == fingerprint(pkg, SCRIPT_A)


def test_no_home_directory_only_costs_the_recomputation(tmp_path, fresh_cache, monkeypatch):
    """A cluster job may run without HOME (Path.home() then raises RuntimeError): parsing must not fail."""
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    pkg = write_package(tmp_path / "pkg", BASE)
    script = tmp_path / "step.py"
    script.write_text(SCRIPT_A)
    assert script_fingerprint(script, pkg) == fingerprint(pkg, SCRIPT_A)
