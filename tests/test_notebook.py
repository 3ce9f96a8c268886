"""notebooks/walkthrough.ipynb runs top to bottom (nbclient, a real IPython kernel) against the app served over
HTTP with the rig behind it, so it cannot rot; its outputs show the file table, an inline image, the downloads."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

import function_app
from local_azure.funchost import FuncHost
from local_azure.png import MINIMUM, png_of_size
from tests.rig.rig import Rig

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


@pytest.fixture
async def funchost(configure: Callable[..., dict[str, str]]) -> AsyncIterator[FuncHost]:
    async with FuncHost(function_app.app) as host:
        yield host


def tagged(nb: Any, tag: str) -> Any:
    return next(cell for cell in nb.cells if tag in cell.metadata.get("tags", []))


def output_text(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        assert output.output_type != "error", output
        parts.append(output.get("text", ""))
        data = output.get("data", {})
        parts.append(data.get("text/plain", "") + data.get("text/html", ""))
    return "\n".join(parts)


async def test_walkthrough_notebook(
    rig: Rig, funchost: FuncHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chart = png_of_size(MINIMUM, "walkthrough")  # a real PNG, shown by the run with plt.show()
    script = rig.emulator.add_script(
        {
            "files": [{"path": "/mnt/data/test.txt", "content": "hello world"}],
            "images": [{"content_base64": base64.b64encode(chart).decode()}],
        }
    )
    monkeypatch.setenv("CI_FILES_URL", funchost.url)  # the kernel inherits the environment
    monkeypatch.delenv("CI_FILES_KEY", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    parameters = nb.cells.index(tagged(nb, "parameters"))
    prompt = f"Create test.txt containing hello world and show a chart {script['marker']}"
    nb.cells.insert(parameters + 1, nbformat.v4.new_code_cell(f"PROMPT = {prompt!r}"))

    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    await client.async_execute()

    table = output_text(tagged(nb, "files-table"))
    assert "test.txt" in table and "image_output" in table and "image/png" in table
    images = [o for o in tagged(nb, "image").outputs if "image/png" in o.get("data", {})]
    assert [base64.b64decode(o.data["image/png"]) for o in images] == [chart]
    assert (tmp_path / "downloads" / "test.txt").read_bytes() == b"hello world"
    assert [p.read_bytes() for p in (tmp_path / "downloads").glob("*.png")] == [chart]
    assert "sha256 verified" in output_text(tagged(nb, "download"))
    deleted = output_text(tagged(nb, "delete"))
    assert "DELETE -> 204" in deleted and "GET after delete -> 404 run_not_found" in deleted
