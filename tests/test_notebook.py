"""notebooks/walkthrough.ipynb runs top to bottom (nbclient, a real IPython kernel) against the app served over
HTTP with the rig behind it, so it cannot rot; its outputs show the annotations, the file table, an inline image,
the downloads, the run found again in the list of runs, never a whole SAS URL; its last cell deletes the run only
when asked (the test asks)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from local_azure.funchost import FuncHost
from local_azure.png import MINIMUM, png_of_size
from tests.rig.rig import Rig

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


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


def every_output(nb: Any) -> str:
    return "\n".join(output_text(cell) for cell in nb.cells if cell.cell_type == "code")


async def test_walkthrough_notebook(
    rig: Rig, funchost: FuncHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chart = png_of_size(MINIMUM, "walkthrough")  # a real PNG, shown by the run with plt.show()
    script = rig.emulator.add_script(
        {
            "files": [{"path": "/mnt/data/test.txt", "content": "hello world"}],
            "images": [{"content_base64": base64.b64encode(chart).decode()}],
            "latency": 1,
        }
    )
    monkeypatch.setenv("CI_FILES_URL", funchost.url)  # the kernel inherits the environment
    monkeypatch.delenv("CI_FILES_KEY", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    assert "DELETE_RUN = False" in tagged(nb, "parameters").source, "deleting is skipped by default"
    assert nb.cells.index(tagged(nb, "delete")) == len(nb.cells) - 1, "deleting is the last cell"
    parameters = nb.cells.index(tagged(nb, "parameters"))
    prompt = f"Create test.txt containing hello world and show a chart {script['marker']}"
    nb.cells.insert(parameters + 1, nbformat.v4.new_code_cell(f"PROMPT = {prompt!r}\nDELETE_RUN = True"))

    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    await client.async_execute()

    run_id = re.search(r"\[2/7\] run (resp_\w+) started", every_output(nb)).group(1)  # type: ignore[union-attr]
    annotations = json.loads(
        output_text(tagged(nb, "annotations")).split("[3/7] annotations:", 1)[1].split("answer:")[0]
    )
    (cited,) = annotations
    assert cited["type"] == "container_file_citation" and cited["filename"] == "test.txt"
    assert cited["container_id"].startswith("cntr_") and cited["file_id"].startswith("cfile_")
    table = output_text(tagged(nb, "files-table"))
    assert "test.txt" in table and "image_output" in table and "image/png" in table
    short_link = r"^#1 https://127\.0\.0\.1:\d+/\.\.\./test\.txt\?\[SAS: \d+ characters\]$"
    assert re.search(short_link, table, re.MULTILINE), table
    images = [o for o in tagged(nb, "image").outputs if "image/png" in o.get("data", {})]
    assert [base64.b64decode(o.data["image/png"]) for o in images] == [chart]
    folder = tmp_path / "downloads" / run_id
    assert (folder / "test.txt").read_bytes() == b"hello world"
    assert [p.read_bytes() for p in folder.glob("*.png")] == [chart]
    assert "sha256 verified" in output_text(tagged(nb, "download"))
    runs = output_text(tagged(nb, "runs"))
    assert runs.startswith("[7/7] your latest runs, newest first (local time):\n"), runs
    (listed,) = [line for line in runs.splitlines() if run_id in line]
    size = 11 + len(chart)
    assert re.fullmatch(
        rf"  \w{{3}} \d\d \d\d:\d\d  completed +2 files +{size:,} bytes  {run_id}  Create test.txt .*…", listed
    )
    assert f"this run: completed, 2 files, {size:,} bytes" in runs
    assert "sig=" not in every_output(nb) and "se=" not in every_output(nb), "a whole SAS URL was printed"
    deleted = output_text(tagged(nb, "delete"))
    assert "DELETE -> 204" in deleted and "GET after delete -> 404 run_not_found" in deleted


async def test_the_last_cell_keeps_the_run_by_default(
    rig: Rig, funchost: FuncHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete cell alone, with the notebook's own parameters: it deletes nothing."""
    monkeypatch.setenv("CI_FILES_URL", funchost.url)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = [
        tagged(nb, "parameters"),
        nbformat.v4.new_code_cell("import httpx\nRUN_ID = 'resp_kept'\nservice = httpx.Client()"),
        tagged(nb, "delete"),
    ]
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    await client.async_execute()
    assert "skipped: the run resp_kept and its files are kept (set DELETE_RUN = True" in output_text(nb.cells[-1])
