"""The invoice's QR code as a PNG: the same bytes as ``segno.make(payload, error="m")``
saved at SCALE and BORDER, in about half the CPU.

Per invoice (best of 15 runs, 42-character address, version 3): segno 2.9 ms for the
code, of which ~2.3 ms is its search for the best of the 8 masks, and 0.9 ms for its PNG
writer, which packs every pixel in Python. The search is kept (a wallet reads this code
off a screen, where the most robust mask matters, bench/hotspots.md §3) and evaluated
faster: segno makes the code with mask 0, the 8 candidates are derived from it with
integer operations on whole rows (one byte per module) and scored by segno's penalty
rules (ISO/IEC 18004 §7.8.3 as segno 1.6 counts them), and segno makes the code again
with the winner unless it is 0: 1.8 ms. The PNG packs each module row once and repeats
it: 0.2 ms. tests/test_qr.py checks the scores and the PNG bytes against segno's own.
"""

from __future__ import annotations

import functools
import itertools
import struct
import zlib
from collections.abc import Iterable

import segno
from segno.encoder import (
    add_alignment_patterns,
    add_finder_patterns,
    get_data_mask_functions,
    make_matrix,
)

SCALE = 6  # pixels per module
BORDER = 2  # quiet zone, in modules
_COMPRESSION = 9  # segno's default: same level, same bytes


def invoice_png(payload: str) -> bytes:
    """``segno.make(payload, error="m").save(out, kind="png", scale=SCALE, border=BORDER)``."""
    return _png(best_mask_code(payload).matrix, SCALE, BORDER)


def best_mask_code(payload: str) -> segno.QRCode:
    """``segno.make(payload, error="m")``: the mask is the one segno's search picks."""
    code = segno.make(payload, error="m", mask=0)
    if code.is_micro:  # never for a payment URI or address; segno's own search then
        return segno.make(payload, error="m")
    best = _best_mask(code.matrix)
    return code if best == 0 else segno.make(payload, error="m", mask=best)


class _Layout:
    """One symbol size as segno lays it out for the mask search: the 8 mask patterns
    (rows as integers, one byte per module, set only inside the encoding region) and the
    format / version information modules, still unwritten (0) while masks are scored."""

    def __init__(self, size: int) -> None:
        # segno's own (untyped) helpers, called as its encoder calls them.
        function = make_matrix(size, size)  # type: ignore[no-untyped-call]
        add_finder_patterns(function, size, size)  # type: ignore[no-untyped-call]
        add_alignment_patterns(function, size, size)  # type: ignore[no-untyped-call]
        function[-8][8] = 0x1  # the dark module (segno's find_and_apply_best_mask)
        # Reserved for format / version information: 0 with the reservation, unset
        # (0x2) without it; the timing pattern crosses the format rows and stays.
        reserved = make_matrix(size, size)  # type: ignore[no-untyped-call]
        unreserved = make_matrix(size, size, reserve_regions=False)  # type: ignore[no-untyped-call]
        cells = range(size)
        self.patterns = [
            [_row_int(function[i][j] > 0x1 and bool(mask(i, j)) for j in cells) for i in cells]
            for mask in get_data_mask_functions(False)  # type: ignore[no-untyped-call]
        ]
        self.kept = [
            _row_int(not (reserved[i][j] == 0x0 and unreserved[i][j] == 0x2) for j in cells)
            for i in cells
        ]


@functools.cache
def _layout(size: int) -> _Layout:
    return _Layout(size)


def _row_int(bits: Iterable[bool]) -> int:
    return int.from_bytes(bytes(bits), "big")


def _best_mask(masked_with_0: tuple[bytearray, ...]) -> int:
    """The mask segno's search picks (the first with the lowest penalty), from the final
    matrix of the code made with mask 0."""
    size = len(masked_with_0)
    layout = _layout(size)
    # The matrix before masking, format / version modules back to 0, as segno scores it.
    plain = [
        (int.from_bytes(row, "big") & kept) ^ mask0
        for row, kept, mask0 in zip(masked_with_0, layout.kept, layout.patterns[0], strict=True)
    ]
    scores = [
        _penalty([row ^ bit for row, bit in zip(plain, pattern, strict=True)], size)
        for pattern in layout.patterns
    ]
    return scores.index(min(scores))


_N3 = b"\x01\x00\x01\x01\x01\x00\x01"
_LIGHT4 = bytes(4)


def _penalty(rows: list[int], size: int) -> int:
    """segno.encoder.evaluate_mask of the matrix whose rows are ``rows``."""
    ones = int.from_bytes(b"\x01" * size, "big")  # 1 in every module's byte
    inner = (1 << (8 * (size - 1))) - 1  # every module but a row's first
    n1 = n2 = 0
    # N1: a run of 5 + i modules of one colour costs 3 + i, that is 1 per window of 5
    # alike modules in it plus 2 per run. Rows: ``alike`` marks a module equal to the one
    # before it (byte j of ``x << 8 * k`` is module j + k).
    for row in rows:
        alike = (row ^ (row >> 8)) ^ ones
        windows = (alike << 8) & (alike << 16) & (alike << 24) & (alike << 32) & ones
        n1 += windows.bit_count() + 2 * (windows & ~(windows >> 8)).bit_count()
    # Columns: the same, one row against the one above, a whole row of columns at once.
    below = [(row ^ above) ^ ones for above, row in itertools.pairwise(rows)]
    previous = 0
    for i in range(size - 4):
        windows = below[i] & below[i + 1] & below[i + 2] & below[i + 3]
        n1 += windows.bit_count() + 2 * (windows & ~previous).bit_count()
        previous = windows
    # N2: each 2 x 2 block of one colour costs 3 (blocks overlap).
    for above, row in itertools.pairwise(rows):
        differs = (row ^ (row >> 8)) | (above ^ (above >> 8)) | (row ^ above)
        n2 += 3 * (size - 1 - (differs & inner).bit_count())
    lines = [row.to_bytes(size, "big") for row in rows]
    lines += [bytes(column) for column in zip(*lines, strict=True)]
    n3 = _n3(_LIGHT4 + _LIGHT4.join(lines) + _LIGHT4)
    # N4: 10 per 5 % of dark modules away from half (segno's arithmetic, floats included).
    dark = sum(row.bit_count() for row in rows)
    n4 = 10 * int(abs(float(dark) / (size**2) * 100 - 50) / 5)
    return n1 + n2 + n3 + n4


def _n3(lines: bytes) -> int:
    """N3: 40 per 1:1:3:1:1 dark:light pattern with 4 light modules (or the symbol's
    edge) before or after it, found as segno's mask_scores finds them. ``lines`` has 4
    light modules before, between and after the lines, which is segno's edge rule."""
    count = 0
    index = lines.find(_N3)
    while index != -1:
        if lines[index - 4 : index] == _LIGHT4 or lines[index + 7 : index + 11] == _LIGHT4:
            count += 40
            index = lines.find(_N3, index + 7)
        else:
            index = lines.find(_N3, index + 4)  # the next possible start of the pattern
    return count


def _png(matrix: tuple[bytearray, ...], scale: int, border: int) -> bytes:
    # A 1-bit greyscale image: 0 is black (a dark module), 1 white (light, the border).
    modules = len(matrix[0])
    width = (modules + 2 * border) * scale
    height = (len(matrix) + 2 * border) * scale
    row_bytes = (width + 7) // 8
    pad = "0" * (row_bytes * 8 - width)  # the last byte is filled with zero bits
    dark, light = "0" * scale, "1" * scale
    side = light * border

    def scanline(bits: str) -> bytes:
        return b"\0" + int(bits + pad, 2).to_bytes(row_bytes, "big")  # filter: None

    quiet = scanline(light * (modules + 2 * border)) * (border * scale)
    # The module row's other pixel rows repeat it: filter "Up" with zero differences.
    same_as_above = (b"\2" + bytes(row_bytes)) * (scale - 1)
    idat = bytearray(quiet)
    for row in matrix:
        idat += scanline(side + "".join(dark if module else light for module in row) + side)
        idat += same_as_above
    idat += quiet
    header = struct.pack(">2I5B", width, height, 1, 0, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(bytes(idat), _COMPRESSION)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(name: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))
