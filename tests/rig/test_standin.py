"""The offline stand-in (local_azure/standin.py, local_azure/chart.py): free-text prompts done for real on the
input's bytes, through the emulator with the real openai SDK, and its parts alone (the PNG decoded)."""

from __future__ import annotations

import base64
import math
import statistics
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from code_interpreter_files import model_info
from local_azure import chart, standin
from local_azure.emulator_client import EmulatorControl, start_emulator, stop_emulator
from local_azure.standin import InputFile, plan

KEY = "stand-in-key"
SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "samples" / "weather.csv"


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the RGB pixels of an 8-bit RGB PNG (filter type 0 rows, as chart.py writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, {}
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = width * 3 + 1
    assert len(raw) == stride * height and all(raw[y * stride] == 0 for y in range(height))
    return width, height, b"".join(raw[y * stride + 1 : (y + 1) * stride] for y in range(height))


def colours(pixels: bytes) -> set[tuple[int, int, int]]:
    return {(pixels[i], pixels[i + 1], pixels[i + 2]) for i in range(0, len(pixels), 3)}


def csv_input(text: str, name: str = "data.csv") -> InputFile:
    data = text.encode()
    return InputFile(name, data, len(data))


def test_create_writes_exactly_the_text() -> None:
    made = plan('Create notes.md containing "# Title\nline two"', [])
    (file,) = made.files
    assert (file.name, file.data) == ("notes.md", b"# Title\nline two")
    assert "[notes.md](sandbox:/mnt/data/notes.md)" in made.text and "no model ran" in made.text
    assert plan("please write hello.txt with the text hi there", []).files[0].data == b"hi there"


@pytest.mark.parametrize(
    "prompt",
    ["Create ../../etc/passwd containing x", "Create /etc/passwd containing x", "make .bashrc containing x"],
)
def test_a_name_that_is_not_a_plain_file_name_is_not_written(prompt: str) -> None:
    made = plan(prompt, [])
    assert [f.name for f in made.files] == [standin.NOTES]


def test_a_chart_draws_the_numbers_of_the_csv() -> None:
    rows = [(f"m{i}", i * 10.0, 100 - i) for i in range(1, 13)]
    text = "month,sales,stock\n" + "".join(f"{m},{s},{k}\n" for m, s, k in rows)
    made = plan("Plot data.csv as trend.png", [csv_input(text)])
    (file,) = made.files
    assert file.name == "trend.png" and made.images == [file.data]  # a file and the plt.show() image
    width, height, pixels = decode_png(file.data)
    assert (width, height) == (chart.WIDTH, chart.HEIGHT)
    assert {chart.PALETTE[0], chart.PALETTE[1], chart.INK} <= colours(pixels)  # two series and the axes
    assert "Plotted sales, stock (12 rows of data.csv)" in made.text
    only_sales = plan("Plot the sales of data.csv", [csv_input(text)])
    assert chart.PALETTE[1] not in colours(decode_png(only_sales.files[0].data)[2])


def test_the_line_goes_where_the_numbers_are() -> None:
    """A rising series: its colour is lower on the left of the plot than on the right."""
    png = chart.line_chart("t", ["a", "b"], [("up", [0.0, 1.0])])
    width, height, pixels = decode_png(png)
    blue = chart.PALETTE[0]

    def rows_with_blue(x: int) -> list[int]:
        plot_rows = range(chart.TOP, height - chart.BOTTOM + 1)  # below the legend
        return [y for y in plot_rows if pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3] == bytes(blue)]

    left, right = rows_with_blue(chart.LEFT + 10), rows_with_blue(width - chart.RIGHT - 10)
    assert left and right and min(left) > max(right)


def test_a_summary_is_computed_from_the_csv() -> None:
    data = SAMPLE.read_bytes()
    made = plan("Summarise weather.csv", [InputFile("weather.csv", data, len(data))])
    (file,) = made.files
    text = file.data.decode()
    temperatures = [float(line.split(",")[1]) for line in SAMPLE.read_text().splitlines()[1:]]
    assert "rows: 12, columns: 3 (month, temperature_c, rain_mm)" in text
    line = next(row for row in text.splitlines() if row.startswith("temperature_c"))
    assert line.split()[1:] == [
        "12",
        f"{min(temperatures):.6g}",
        f"{max(temperatures):.6g}",
        f"{statistics.fmean(temperatures):.6g}",
        f"{math.fsum(temperatures):.6g}",
    ]
    assert "month" in text and "12 distinct" in text


def test_anything_else_gets_a_note_of_what_is_understood() -> None:
    made = plan("Tell me a joke", [csv_input("a\n1\n")])
    (file,) = made.files
    assert file.name == standin.NOTES and "create NAME containing TEXT" in file.data.decode()
    assert "Your prompt: Tell me a joke" in file.data.decode() and "data.csv (4 bytes)" in file.data.decode()
    no_csv = plan("Plot my data", [])
    assert [f.name for f in no_csv.files] == [standin.NOTES] and "no CSV input" in no_csv.text


def test_a_large_input_is_read_up_to_the_limit() -> None:
    text = "x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(1000))
    data = text.encode()
    cut = InputFile("big.csv", data[:100], len(data))
    made = plan("Summarise big.csv", [cut])
    assert "rows: " in made.files[0].data.decode() and f"I read its first 100 bytes of {len(data):,}" in made.text


@pytest.mark.parametrize(
    "data",
    [
        b"a,b\n" + b"x" * 200_000 + b",1\n",  # a field over csv's limit
        b"a,b\n1,\x002\n",  # a NUL byte
        bytes(range(256)) * 100,  # not text at all
        b"",
        b"\n\n\n",
        b"a," * 50_000 + b"\n" + b"1," * 50_000 + b"\n",  # very wide
    ],
)
def test_hostile_csv_gets_an_answer_not_an_error(data: bytes) -> None:
    made = plan("Plot and summarise data.csv", [InputFile("data.csv", data, len(data))])
    assert made.text.endswith("(Offline stand-in for Azure OpenAI: no model ran.)")
    assert made.files and all(f.name in ("chart.png", "summary.txt", standin.NOTES) for f in made.files)


def test_the_app_and_the_stand_in_agree_on_the_owner() -> None:
    assert model_info.STAND_IN_OWNER == standin.STAND_IN_OWNER
    assert model_info.is_local("http://127.0.0.1:1/openai/v1/") and model_info.is_local("http://localhost:9/")
    assert not model_info.is_local("https://x.openai.azure.com/openai/v1/")


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[openai.OpenAI, EmulatorControl]]:
    proc, url = start_emulator(KEY, extra_args=("--no-schema-check",))
    try:
        with EmulatorControl(url) as control:
            yield openai.OpenAI(base_url=f"{url}/openai/v1/", api_key=KEY), control
    finally:
        stop_emulator(proc)


def test_through_the_api_with_an_uploaded_csv(emulator: tuple[openai.OpenAI, EmulatorControl]) -> None:
    client, control = emulator
    with SAMPLE.open("rb") as handle:
        uploaded = client.files.create(file=("weather.csv", handle), purpose="assistants")
    tools = [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": [uploaded.id]}}]
    response = client.responses.create(
        model="offline-stand-in",
        input="Plot the temperatures in weather.csv and summarise it",
        tools=tools,  # type: ignore[arg-type]
        include=["code_interpreter_call.outputs"],
    )
    call, message = response.output
    names = [a.filename for a in message.content[0].annotations]  # type: ignore[union-attr]
    assert names == ["chart.png", "summary.txt"]
    (image,) = [o for o in call.outputs if o.type == "image"]  # type: ignore[union-attr]
    png = base64.b64decode(image.url.split(",", 1)[1])
    chart_id = message.content[0].annotations[0].file_id  # type: ignore[union-attr]
    stored = client.containers.files.content.retrieve(chart_id, container_id=call.container_id).read()  # type: ignore[union-attr]
    assert stored == png and decode_png(png)[:2] == (chart.WIDTH, chart.HEIGHT)
    assert client.models.retrieve("offline-stand-in").owned_by == standin.STAND_IN_OWNER
    schemas = control.stats()["schemas"]
    assert schemas["enabled"] is False and schemas["bodies_skipped"] > 0 and schemas["bodies_queued"] == 0
