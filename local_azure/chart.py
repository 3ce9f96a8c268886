"""A line chart of a table's numbers as a real PNG, in pure Python: what the offline stand-in draws when a
prompt asks to plot an input CSV (local_azure/standin.py).

Kept as our own code, measured: matplotlib 3.10.3 would add 11 wheels, 42 MB (numpy, pillow, fonttools,
kiwisolver, ...) to what `scripts/start.sh --offline` installs, for one kind of chart that only has to
show the numbers of a CSV truthfully. This draws an 800x480 RGB picture (axes, grid, one polyline per
column, value labels in a 5x7 bitmap font, a legend) and encodes it with local_azure/png.py; a chart of
a 1,000-row, 3-column CSV takes about 0.1 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .png import encode_rgb

WIDTH, HEIGHT = 800, 480
LEFT, RIGHT, TOP, BOTTOM = 100, 40, 64, 56  # the plot area's margins
SCALE = 2  # each font pixel is SCALE x SCALE
MAX_POINTS = 2000  # longer series are sampled evenly (the picture has 692 columns of pixels)
MAX_SERIES = 6

Colour = tuple[int, int, int]
WHITE: Colour = (255, 255, 255)
INK: Colour = (40, 40, 40)
GRID: Colour = (225, 225, 225)
PALETTE: tuple[Colour, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
)

# 5x7 glyphs, one hex byte per row (bit 4 is the leftmost pixel); lower case is drawn as upper case.
_FONT = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F", "3": "1F02040201110E",
    "4": "02060A121F0202", "5": "1F101E0101110E", "6": "0608101E11110E", "7": "1F010204080808",
    "8": "0E11110E11110E", "9": "0E11110F01020C", "A": "0E1111111F1111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F", "F": "1F10101E101010",
    "G": "0E11101711110F", "H": "1111111F111111", "I": "0E04040404040E", "J": "0702020202120C",
    "K": "11121418141211", "L": "1010101010101F", "M": "111B1515111111", "N": "11111915131111",
    "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D", "R": "1E11111E141211",
    "S": "0F10100E01011E", "T": "1F040404040404", "U": "1111111111110E", "V": "11111111110A04",
    "W": "1111111515150A", "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F",
    " ": "00000000000000", ".": "00000000000C0C", ",": "000000000C0408", "-": "0000001F000000",
    "_": "0000000000001F", ":": "000C0C000C0C00", "/": "00010204081000", "(": "02040808080402",
    ")": "08040202020408", "%": "18190204081303", "+": "0004041F040400", "?": "0E110102040004",
    "=": "00001F001F0000", "#": "0A0A1F0A1F0A0A", "'": "0C040800000000",
}  # fmt: skip
GLYPHS = {char: bytes.fromhex(rows) for char, rows in _FONT.items()}
CHAR_WIDTH = 6 * SCALE  # 5 pixels and a gap


class Canvas:
    """An RGB picture to draw on; points outside it are skipped."""

    def __init__(self, width: int, height: int, background: Colour = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, colour: Colour) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            at = (y * self.width + x) * 3
            self.pixels[at : at + 3] = bytes(colour)

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: Colour) -> None:
        """Fill from (x0, y0) to (x1, y1), both included."""
        x0, x1 = max(0, min(x0, x1)), min(self.width - 1, max(x0, x1))
        row = bytes(colour) * (x1 - x0 + 1)
        for y in range(max(0, min(y0, y1)), min(self.height - 1, max(y0, y1)) + 1):
            at = (y * self.width + x0) * 3
            self.pixels[at : at + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: Colour, width: int = 1) -> None:
        """Bresenham's line, `width` pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error = dx + dy
        half = width // 2
        while True:
            if width == 1:
                self.dot(x0, y0, colour)
            else:
                self.rect(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, colour)
            if x0 == x1 and y0 == y1:
                return
            doubled = 2 * error
            if doubled >= dy:
                error += dy
                x0 += sx
            if doubled <= dx:
                error += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, colour: Colour = INK) -> None:
        """`text` with its top left corner at (x, y), in the 5x7 font."""
        for index, char in enumerate(text):
            glyph = GLYPHS.get(char.upper(), GLYPHS["?"])
            left = x + index * CHAR_WIDTH
            for row, bits in enumerate(glyph):
                for column in range(5):
                    if bits & (0x10 >> column):
                        px, py = left + column * SCALE, y + row * SCALE
                        self.rect(px, py, px + SCALE - 1, py + SCALE - 1, colour)

    def png(self) -> bytes:
        return encode_rgb(self.width, self.height, self.pixels)


def text_width(text: str) -> int:
    return len(text) * CHAR_WIDTH - SCALE


def label(value: float) -> str:
    """A short tick label: 1250 -> 1250, 1250000 -> 1.25M, 0.0421 -> 0.0421."""
    if value == 0:
        return "0"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "K")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"


def sample(values: Sequence[float], limit: int = MAX_POINTS) -> list[float]:
    """At most `limit` values, evenly spread over the series, first and last kept."""
    if len(values) <= limit:
        return list(values)
    step = (len(values) - 1) / (limit - 1)
    return [values[round(i * step)] for i in range(limit)]


def value_range(series: Sequence[Sequence[float]]) -> tuple[float, float]:
    """The y range: the data's, a little wider; a flat series gets +-1 around its value."""
    finite = [v for values in series for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if low == high:
        return low - 1, high + 1
    pad = (high - low) * 0.05
    return low - pad, high + pad


def line_chart(title: str, x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]]) -> bytes:
    """A PNG line chart: one line per (name, values), all sharing x (`x_labels`: one per value)."""
    series = [(name, sample(values)) for name, values in series[:MAX_SERIES]]
    if not series or not any(values for _, values in series):
        raise ValueError("nothing to draw: no numbers")
    canvas = Canvas(WIDTH, HEIGHT)
    left, right, top, bottom = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    canvas.text((WIDTH - text_width(title[:60])) // 2, 12, title[:60])
    low, high = value_range([values for _, values in series])

    def y_of(value: float) -> int:
        return round(bottom - (value - low) / (high - low) * (bottom - top))

    for tick in range(5):
        value = low + (high - low) * tick / 4
        y = y_of(value)
        canvas.line(left, y, right, y, GRID)
        text = label(value)
        canvas.text(left - 8 - text_width(text), y - 7, text)
    canvas.line(left, top, left, bottom, INK)
    canvas.line(left, bottom, right, bottom, INK)
    count = max(len(values) for _, values in series)
    positions = [left + (right - left) // 2] if count == 1 else [
        round(left + i * (right - left) / (count - 1)) for i in range(count)
    ]  # fmt: skip
    shown = sample([float(i) for i in range(len(x_labels))], 5) if x_labels else []
    for index in map(int, shown):
        at = round(index * (count - 1) / max(1, len(x_labels) - 1)) if count > 1 else 0
        text = str(x_labels[index])[:10]
        x = positions[min(at, count - 1)]
        canvas.line(x, bottom, x, bottom + 4, INK)
        canvas.text(min(max(0, x - text_width(text) // 2), WIDTH - text_width(text)), bottom + 10, text)
    legend_x = left
    for number, (name, values) in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        points = [(positions[i], y_of(v)) for i, v in enumerate(values) if math.isfinite(v)]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            canvas.line(x0, y0, x1, y1, colour, width=2)
        if len(points) <= 60:
            for x, y in points:
                canvas.rect(x - 2, y - 2, x + 2, y + 2, colour)
        canvas.rect(legend_x, 40, legend_x + 11, 51, colour)
        canvas.text(legend_x + 16, 40, name[:16])
        legend_x += 16 + text_width(name[:16]) + 24
    return canvas.png()
