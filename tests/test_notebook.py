"""notebooks/walkthrough.ipynb runs top to bottom (nbclient, a real IPython kernel) against the app served over
HTTP with the rig behind it, so it cannot rot; its outputs show the file table, an inline image, the downloads."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

import function_app
from tests.rig.funchost import FuncHost
from tests.rig.rig import Rig

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def png(width: int, height: int) -> bytes:
    """A real RGB PNG (a colour gradient), encoded here: signature, IHDR, one zlib IDAT, IEND.
    Written out because it is a dozen lines and the tests need no imaging library for it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


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
    chart = png(24, 16)
    script = rig.emulator.add_script(
        {
            "files": [
                {"path": "/mnt/data/test.txt", "content": "hello world"},
                {"path": "/mnt/data/chart.png", "content_base64": base64.b64encode(chart).decode()},
            ]
        }
    )
    monkeypatch.setenv("CI_FILES_URL", funchost.url)  # the kernel inherits the environment
    monkeypatch.delenv("CI_FILES_KEY", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    parameters = nb.cells.index(tagged(nb, "parameters"))
    prompt = f"Create test.txt containing hello world and chart.png {script['marker']}"
    nb.cells.insert(parameters + 1, nbformat.v4.new_code_cell(f"PROMPT = {prompt!r}"))

    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    await client.async_execute()

    table = output_text(tagged(nb, "files-table"))
    assert "test.txt" in table and "chart.png" in table and "image/png" in table
    images = [o for o in tagged(nb, "image").outputs if "image/png" in o.get("data", {})]
    assert [base64.b64decode(o.data["image/png"]) for o in images] == [chart]
    assert (tmp_path / "downloads" / "test.txt").read_bytes() == b"hello world"
    assert (tmp_path / "downloads" / "chart.png").read_bytes() == chart
    assert "sha256 verified" in output_text(tagged(nb, "download"))
    deleted = output_text(tagged(nb, "delete"))
    assert "DELETE -> 204" in deleted and "GET after delete -> 404 run_not_found" in deleted
