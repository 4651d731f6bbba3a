"""The architecture's import contracts (pyproject's [tool.importlinter]) hold, and each one fails
when an import it forbids is added: checked on a copy of the tree, never on the tree itself."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("checkout", "ops", "carts", "orders", "payments", "analytics")
LAYERS = "Packages in layers: demo down to checkout"
RUNTIME = "The runtime imports no domain app, maintenance or demo"
ACYCLIC = "No import cycles inside any package"


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=tree, capture_output=True, text=True, timeout=120,
    )


def verdicts(result: subprocess.CompletedProcess) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from the summary lint-imports prints."""
    found = {}
    for line in result.stdout.splitlines():
        for verdict in ("KEPT", "BROKEN"):
            if line.endswith(" " + verdict):
                found[line[: -len(verdict) - 1]] = verdict
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_tree_keeps_every_contract(tree):
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result) == {LAYERS: "KEPT", RUNTIME: "KEPT", ACYCLIC: "KEPT"}


@pytest.mark.parametrize(("module", "added", "contract"), [
    # an app reaching up a layer: orders may not know payments
    ("orders/services.py", "from payments.models import Payment", LAYERS),
    # the runtime reaching into a domain app, even inside a function
    ("ops/runtime/ledger.py", "def _peek():\n    from carts.models import Cart", RUNTIME),
    # two runtime modules importing each other
    ("ops/runtime/models.py", "from ops.runtime import runner", ACYCLIC),
])
def test_a_forbidden_import_breaks_its_contract(tree, module, added, contract):
    path = tree / module
    original = path.read_text()
    path.write_text(original + "\n\n" + added + "  # noqa\n")
    try:
        result = lint(tree)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdicts(result)[contract] == "BROKEN"
