"""The invoice's QR code (bot/qr.py) is byte for byte the PNG segno writes itself, with
segno's own choice of mask, for the payloads buyers get and for every size around them."""

from __future__ import annotations

import io
import random

import pytest
import segno

from bot.qr import BORDER, SCALE, _png, invoice_png
from sandbox.kryptoexpress_model import make_address


def _segno_png(payload: str, scale: int = SCALE, border: int = BORDER) -> bytes:
    out = io.BytesIO()
    segno.make(payload, error="m").save(out, kind="png", scale=scale, border=border)
    return out.getvalue()


def _payloads() -> list[str]:
    rng = random.Random(14)
    addresses = [make_address(asset, rng) for asset in ("USDT", "BTC", "ETH", "LTC") * 25]
    uris = [f"bitcoin:{make_address('BTC', rng)}?amount=0.000{i:04d}" for i in range(25)]
    # Every length to 300 characters: QR versions 1 to 13, byte and alphanumeric modes.
    sizes = [rng.choice(("x", "X", "7")) * n for n in range(1, 301, 3)]
    return addresses + uris + sizes


@pytest.mark.parametrize("payload", _payloads())
def test_invoice_png_is_segnos_png(payload: str) -> None:
    assert invoice_png(payload) == _segno_png(payload)


@pytest.mark.parametrize(("scale", "border"), [(1, 0), (1, 4), (3, 1), (8, 3)])
def test_png_at_other_scales_and_borders(scale: int, border: int) -> None:
    payload = "bitcoin:bc1qexample?amount=0.001"
    code = segno.make(payload, error="m")
    assert _png(code.matrix, scale, border) == _segno_png(payload, scale, border)
