"""What the offline stand-in for Azure OpenAI does with a free-text prompt (no script marker): the few
things a newcomer tries, done for real on real bytes. No model runs; the answer says so.

- "create NAME containing TEXT" writes NAME with TEXT in it;
- a chart or plot of an input CSV draws its number columns as a PNG (local_azure/chart.py), saved as a
  file and also shown as the code_interpreter_call's image output (what `plt.show()` gives);
- "summarise" (summary, describe, statistics) of an input CSV writes a summary computed from it;
- anything else: a text answer and one notes file saying what the stand-in understands.

Inputs are the bytes the caller uploaded (Files / Uploads API, local_azure/emulator_files.py); at most
`READ_LIMIT` bytes of each are read, so memory stays bounded whatever their size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .chart import MAX_SERIES, line_chart

#: `owned_by` of the model object the stand-in answers (GET /openai/v1/models/{deployment}); the app's
#: /api/health reads it (code_interpreter_files/model_info.py) and says the model is a stand-in.
STAND_IN_OWNER = "offline-stand-in"
READ_LIMIT = 8 * 1024 * 1024
NOTES = "stand-in-notes.txt"
MAX_ROWS = 100_000  # with MAX_COLUMNS: at most 10 million cells of an 8 MiB input are kept
MAX_COLUMNS = 100

_NAME = r"[\"'`]?(?P<name>[A-Za-z0-9][\w.-]{0,99}\.[A-Za-z0-9]{1,10})[\"'`]?"
CREATE = re.compile(
    r"\b(?:create|make|write|save)\s+(?:a\s+|the\s+)?(?:(?:text\s+)?file\s+)?(?:(?:called|named)\s+)?"
    + _NAME
    + r"\s+(?:containing|that\s+contains|with\s+(?:the\s+)?(?:text|content|contents))\s*:?\s*(?P<text>.+)$",
    re.IGNORECASE | re.DOTALL,
)
CHART = re.compile(r"\b(chart|plot|graph|draw|visuali[sz]e|histogram|diagram)\b", re.IGNORECASE)
SUMMARY = re.compile(r"\b(summari[sz]e|summary|describe|statistics|stats)\b", re.IGNORECASE)
PNG_NAME = re.compile(r"\b([A-Za-z0-9][\w.-]{0,99}\.png)\b", re.IGNORECASE)
TEXT_NAME = re.compile(r"\b([A-Za-z0-9][\w.-]{0,99}\.(?:txt|md))\b", re.IGNORECASE)
TABLE_SUFFIXES = (".csv", ".tsv")

UNDERSTANDS = """\
This answer comes from the offline stand-in for Azure OpenAI (local_azure/emulator.py, started by
`scripts/start.sh --offline`). No model ran. It understands:

  create NAME containing TEXT          writes the file NAME with TEXT in it
  plot (chart, graph) ... + a CSV      draws the CSV's number columns as chart.png (or the .png the
                                       prompt names), also shown as an image output like plt.show()
  summarise (describe) ... + a CSV     writes summary.txt: rows, columns, count/min/max/mean/sum

Attach a CSV with `ci-files run --input data.csv "Plot data.csv"` (docs/samples/weather.csv is one).
With an Azure OpenAI deployment (`scripts/start.sh` without --offline, or a deployed app) any prompt works.
"""


@dataclass(frozen=True)
class InputFile:
    """An input file as the container holds it: its name and (at most READ_LIMIT of) its bytes."""

    name: str
    data: bytes
    size: int  # the whole file's size

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


@dataclass(frozen=True)
class OutputFile:
    name: str
    data: bytes

    @property
    def path(self) -> str:
        return f"/mnt/data/{self.name}"

    @property
    def link(self) -> str:
        return f"[{self.name}](sandbox:{self.path})"


@dataclass
class Plan:
    """What the run writes and answers."""

    text: str
    files: list[OutputFile] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


@dataclass
class Table:
    """A CSV read as text cells; `numbers` holds the columns that are numbers (most cells parse)."""

    source: InputFile
    header: list[str]
    rows: list[list[str]]
    numbers: dict[int, list[float]]


def plan(prompt: str, inputs: Sequence[InputFile]) -> Plan:
    """The run for this prompt and these inputs."""
    created = CREATE.search(prompt)
    if created is not None:
        return _create(created.group("name"), _unquote(created.group("text")))
    wants_chart, wants_summary = bool(CHART.search(prompt)), bool(SUMMARY.search(prompt))
    if not (wants_chart or wants_summary):
        return _notes(prompt, inputs, "I can only do the few things listed in")
    table_input = _pick_table(prompt, inputs)
    if table_input is None:
        return _notes(prompt, inputs, "There is no CSV input to work on; attach one (--input data.csv). See")
    try:
        table = read_table(table_input)
    except csv.Error as error:  # a field over csv's size limit, a NUL byte...
        return _notes(prompt, inputs, f"{table_input.name} is not a CSV I can read ({error}). See")
    result = Plan(text="")
    said = []
    if wants_chart:
        said.append(_add_chart(result, table, _named(PNG_NAME, prompt, "chart.png"), prompt))
    if wants_summary:
        said.append(_add_summary(result, table, _named(TEXT_NAME, prompt, "summary.txt")))
    cut = (
        f" (I read its first {len(table_input.data):,} bytes of {table_input.size:,}.)" if table_input.truncated else ""
    )
    result.text = " ".join(said) + cut + _SIGNATURE
    return result


_SIGNATURE = " (Offline stand-in for Azure OpenAI: no model ran.)"


def _create(name: str, text: str) -> Plan:
    data = text.encode("utf-8")
    file = OutputFile(name, data)
    return Plan(
        text=f"Created {file.link} containing {len(data)} bytes of text.{_SIGNATURE}",
        files=[file],
        code=[f"open({file.path!r}, 'w').write({text[:200]!r})"],
    )


def _notes(prompt: str, inputs: Sequence[InputFile], why: str) -> Plan:
    shown = " ".join(prompt.split())
    shown = shown if len(shown) <= 500 else shown[:497] + "..."
    listed = ", ".join(f"{i.name} ({i.size:,} bytes)" for i in inputs) or "none"
    notes = OutputFile(NOTES, f"{UNDERSTANDS}\nYour prompt: {shown}\nInputs: {listed}\n".encode())
    return Plan(
        text=f"{why} {notes.link}: create a file, plot or summarise a CSV.{_SIGNATURE}",
        files=[notes],
        code=[f"# the offline stand-in did not understand the prompt: wrote {NOTES}"],
    )


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1]
    return text


def _named(pattern: re.Pattern[str], prompt: str, default: str) -> str:
    found = pattern.search(prompt)
    return found.group(1) if found else default


def _pick_table(prompt: str, inputs: Sequence[InputFile]) -> InputFile | None:
    tables = [i for i in inputs if i.name.lower().endswith(TABLE_SUFFIXES)]
    named = [i for i in tables if i.name.lower() in prompt.lower()]
    found = named or tables
    return found[0] if found else None


def _number(cell: str) -> float | None:
    try:
        value = float(cell.strip().replace("_", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def read_table(source: InputFile) -> Table:
    """The CSV's cells (delimiter sniffed; a header when the first row is not all numbers)."""
    text = source.data.decode("utf-8-sig", errors="replace")
    if source.truncated:
        text = text.rsplit("\n", 1)[0]  # drop the cut last line
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if source.name.lower().endswith(".tsv") else csv.excel
    reader = (row[:MAX_COLUMNS] for row in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in row))
    rows = list(itertools.islice(reader, MAX_ROWS + 1))
    width = max((len(row) for row in rows), default=0)
    rows = [row + [""] * (width - len(row)) for row in rows]
    has_header = bool(rows) and any(_number(cell) is None and cell.strip() for cell in rows[0])
    header = [c.strip() or f"column {i + 1}" for i, c in enumerate(rows[0])] if has_header else []
    body = rows[1:] if has_header else rows
    header = header or [f"column {i + 1}" for i in range(width)]
    numbers = {}
    for column in range(width):
        cells = [row[column] for row in body if row[column].strip()]
        parsed = [_number(cell) for cell in cells]
        if cells and sum(v is not None for v in parsed) >= 0.8 * len(cells):
            numbers[column] = [_nan_if_none(_number(row[column])) for row in body]
    return Table(source=source, header=header, rows=body, numbers=numbers)


def _mentioned(prompt: str, table: Table, columns: list[int]) -> list[int]:
    """The columns the prompt names (a word of 3+ letters of the header: "temperatures" names
    temperature_c), or all of them when it names none."""
    words = prompt.lower()
    named = [c for c in columns if any(w in words for w in re.findall(r"[a-z]{3,}", table.header[c].lower()))]
    return named or columns


def _add_chart(result: Plan, table: Table, name: str, prompt: str) -> str:
    if not table.numbers:
        return f"{table.source.name} has no column of numbers to plot."
    label_column = 0 if table.rows and 0 not in table.numbers else None
    x_labels = [row[label_column] for row in table.rows] if label_column is not None else []
    columns = _mentioned(prompt, table, [c for c in table.numbers if c != label_column])[:MAX_SERIES]
    series = [(table.header[c], table.numbers[c]) for c in columns]
    names = ", ".join(table.header[c] for c in columns)
    png = line_chart(
        f"{names} of {table.source.name}", x_labels or [str(i + 1) for i in range(len(table.rows))], series
    )
    file = OutputFile(name, png)
    result.files.append(file)
    result.images.append(png)
    result.code.append(
        f"df = pd.read_csv('/mnt/data/{table.source.name}')\n"
        f"df.plot(y={[table.header[c] for c in columns]!r})\nplt.savefig({file.path!r})\nplt.show()"
    )
    result.logs.append(f"plotted {len(columns)} column(s) over {len(table.rows)} rows")
    return f"Plotted {names} ({len(table.rows)} rows of {table.source.name}) as {file.link}, shown below too."


def _add_summary(result: Plan, table: Table, name: str) -> str:
    lines = [
        f"Summary of {table.source.name} (computed by the offline stand-in, local_azure/standin.py)",
        f"rows: {len(table.rows)}, columns: {len(table.header)} ({', '.join(table.header)})",
        f"sha256 of the bytes read: {hashlib.sha256(table.source.data).hexdigest()}",
        "",
        f"{'column':<20} {'count':>7} {'min':>12} {'max':>12} {'mean':>12} {'sum':>14}",
    ]
    for column, name_ in enumerate(table.header):
        if column in table.numbers:
            values = [v for v in table.numbers[column] if not math.isnan(v)]
            lines.append(
                f"{name_[:20]:<20} {len(values):>7} {min(values):>12.6g} {max(values):>12.6g} "
                f"{statistics.fmean(values):>12.6g} {math.fsum(values):>14.6g}"
            )
        else:
            cells = Counter(row[column].strip() for row in table.rows if row[column].strip())
            top = ", ".join(f"{value[:20]} ({n})" for value, n in cells.most_common(3))
            lines.append(f"{name_[:20]:<20} {sum(cells.values()):>7} text: {len(cells)} distinct; most common: {top}")
    file = OutputFile(name, ("\n".join(lines) + "\n").encode())
    result.files.append(file)
    result.code.append(f"df = pd.read_csv('/mnt/data/{table.source.name}')\nopen({file.path!r}, 'w').write(...)")
    numeric = len(table.numbers)
    return f"Summarised {table.source.name} ({len(table.rows)} rows, {numeric} number column(s)) in {file.link}."
