"""Every notebook runs top to bottom in a fresh kernel of this interpreter, and is committed without outputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import PROJECT, require_root, require_tools
from nbclient import NotebookClient

NOTEBOOK_DIR = PROJECT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Notebooks that build labs: root, and the lab's tools.
BUILDS_LABS = {"01-the-incident.ipynb", "03-the-fixes.ipynb"}
REFERENCE_CAPTURES = PROJECT / "captures"


def execute(notebook: nbformat.NotebookNode, workdir: Path, timeout: int = 240) -> None:
    # "python3" is the kernel of the interpreter running the tests (jupyter_client maps it to sys.executable).
    client = NotebookClient(notebook, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()


def outputs(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def test_there_are_notebooks() -> None:
    assert {path.name for path in NOTEBOOKS} >= {
        "01-the-incident.ipynb", "02-analyze-your-captures.ipynb", "03-the-fixes.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {cell.id} has outputs"


def test_notebooks_are_what_the_builder_writes() -> None:
    # The builder is the notebooks' source: a hand edit of an .ipynb must go into it too.
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOK_DIR / "build_notebooks.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    for name in builder.NOTEBOOKS:
        built = nbformat.writes(builder.build(name)).rstrip("\n")
        assert built == (NOTEBOOK_DIR / name).read_text().rstrip("\n"), f"{name}: run build_notebooks.py"


def test_kernel_is_this_interpreter(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    execute(notebook, tmp_path, timeout=60)
    assert outputs(notebook)[0]["text"].strip() == sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name in BUILDS_LABS:
        require_root()
        require_tools("ip", "iptables", "tcpdump", "ethtool")
    else:
        require_tools("tshark")
        if not any(REFERENCE_CAPTURES.glob("*.pcap*")):
            pytest.skip("no reference captures in captures/ yet")
    # Output directories the notebooks make with tempfile land in this test's directory.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)
    execute(notebook, tmp_path)
    produced = outputs(notebook)
    assert not [o for o in produced if o.get("output_type") == "error"]
    images = [o for o in produced if "image/png" in o.get("data", {})]
    assert images, "the notebook showed no picture"
