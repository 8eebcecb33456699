"""Callback signatures of SPEC §3 (each provider's verify_callback): fail closed on anything odd."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.errors import CallbackMalformed, CallbackRejected
from services.payments.kryptoexpress import KryptoExpressProvider
from services.payments.kryptoexpress import compact as kryptoexpress_compact
from services.payments.kryptoexpress import signature as kryptoexpress_signature
from services.payments.kryptoexpress import verify_signature as verify_kryptoexpress
from services.signatures import verify_cryptopay

VECTOR_NAME = "kryptoexpress-callback-vector.json"


def _load_vector() -> dict[str, Any]:
    candidates = [
        Path(__file__).resolve().parents[2] / "shared/reference" / VECTOR_NAME,
        Path("/work/shared/reference") / VECTOR_NAME,
    ]
    for path in candidates:
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return data
    pytest.fail(f"test vector {VECTOR_NAME} not found in {[str(p) for p in candidates]}")


VECTOR = _load_vector()
SECRET: str = VECTOR["secret"]
RAW: bytes = VECTOR["raw_body"].encode()
COMPACT: bytes = VECTOR["compact_body"].encode()
SIGNATURE: str = VECTOR["x_signature"]


def _flip(hex_digit: str) -> str:
    return "0" if hex_digit != "0" else "1"


# ------------------------------------------------------------------- KryptoExpress
def test_vector_is_what_the_documented_recipe_gives() -> None:
    assert kryptoexpress_compact(RAW) == COMPACT
    assert kryptoexpress_signature(SECRET, COMPACT) == SIGNATURE
    expected = hmac.new(SECRET.encode(), COMPACT, hashlib.sha512).hexdigest()
    assert expected == SIGNATURE


def test_official_vector_verifies_on_the_pretty_raw_body() -> None:
    assert RAW != COMPACT  # the provider sends indented JSON; the signature is over compact
    assert verify_kryptoexpress(SECRET, RAW, SIGNATURE) is True


def test_official_vector_verifies_on_the_compact_body() -> None:
    assert verify_kryptoexpress(SECRET, COMPACT, SIGNATURE) is True


def test_uppercase_hex_and_surrounding_whitespace_are_accepted() -> None:
    # The code lower-cases and strips the header value before comparing: hex case is
    # not part of the secret, so an upper-case signature is accepted.
    assert verify_kryptoexpress(SECRET, RAW, SIGNATURE.upper()) is True
    assert verify_kryptoexpress(SECRET, RAW, f"  {SIGNATURE}\t") is True


def test_wrong_secret_is_refused() -> None:
    assert verify_kryptoexpress("1234567891", RAW, SIGNATURE) is False
    assert verify_kryptoexpress(SECRET + " ", COMPACT, SIGNATURE) is False


@pytest.mark.parametrize("position", [0, 1, 63, 64, 127])
def test_one_flipped_hex_digit_is_refused(position: int) -> None:
    forged = SIGNATURE[:position] + _flip(SIGNATURE[position]) + SIGNATURE[position + 1 :]
    assert forged != SIGNATURE
    assert verify_kryptoexpress(SECRET, RAW, forged) is False
    assert verify_kryptoexpress(SECRET, COMPACT, forged) is False


@pytest.mark.parametrize("signature", [None, "", "   "])
def test_missing_signature_fails_closed(signature: str | None) -> None:
    assert verify_kryptoexpress(SECRET, RAW, signature) is False


@pytest.mark.parametrize("secret", [None, ""])
def test_missing_secret_fails_closed(secret: str | None) -> None:
    # Even a body "signed" with the empty key must not pass when we have no secret.
    empty_key_sig = hmac.new(b"", COMPACT, hashlib.sha512).hexdigest()
    assert verify_kryptoexpress(secret, RAW, SIGNATURE) is False
    assert verify_kryptoexpress(secret, COMPACT, empty_key_sig) is False


@pytest.mark.parametrize(
    "signature",
    [
        SIGNATURE[:-1],
        SIGNATURE + "0",
        SIGNATURE[:64],
        SIGNATURE + SIGNATURE,
        hashlib.sha256(COMPACT).hexdigest(),
    ],
)
def test_signature_of_wrong_length_is_refused(signature: str) -> None:
    assert verify_kryptoexpress(SECRET, RAW, signature) is False


def test_body_with_one_changed_amount_is_refused() -> None:
    for original, changed in (
        (b'"fiatAmount": 16.31', b'"fiatAmount": 16.32'),
        (b'"cryptoAmount": 0.00018486', b'"cryptoAmount": 0.00018487'),
        (b'"isPaid": true', b'"isPaid": false'),
    ):
        assert original in RAW
        tampered = RAW.replace(original, changed)
        assert verify_kryptoexpress(SECRET, tampered, SIGNATURE) is False
        assert verify_kryptoexpress(SECRET, kryptoexpress_compact(tampered), SIGNATURE) is False


@pytest.mark.parametrize(
    "body", [b"not json at all", b'{"id": 1', b"\xff\xfe\x00garbage", b"", b"[" * 100_000]
)
def test_non_json_body_signed_over_raw_bytes_verifies(body: bytes) -> None:
    signature = hmac.new(SECRET.encode(), body, hashlib.sha512).hexdigest()
    assert verify_kryptoexpress(SECRET, body, signature) is True


@pytest.mark.parametrize(
    "body", [b"not json at all", b'{"id": 1', b"\xff\xfe\x00garbage", b"", b"[" * 100_000]
)
def test_non_json_body_with_bad_signature_is_false_without_raising(body: bytes) -> None:
    assert verify_kryptoexpress(SECRET, body, SIGNATURE) is False
    assert verify_kryptoexpress(SECRET, body, "0" * 128) is False


@pytest.mark.parametrize("signature", ["é" * 128, "ａ" * 128])
def test_non_ascii_kryptoexpress_signature_is_false(signature: str) -> None:
    assert verify_kryptoexpress(SECRET, RAW, signature) is False


@settings(max_examples=200, deadline=None)
@given(secret=st.text(min_size=1), body=st.binary(), signature=st.text(alphabet="0123456789abcdef"))
def test_random_hex_signatures_never_verify_and_never_raise(
    secret: str, body: bytes, signature: str
) -> None:
    genuine = hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()
    assert verify_kryptoexpress(secret, body, genuine) is True
    if signature != genuine:
        assert verify_kryptoexpress(secret, body, signature) is False


# ------------------------------------------------------------------------ Crypto Pay
CP_TOKEN = "12345:AAzQcZWQqQAbsfgPnOLr4FuBc4bQGKqfXyL"
CP_BODY = json.dumps(
    {
        "update_id": 1,
        "update_type": "invoice_paid",
        "request_date": "2025-04-21T12:00:00.000Z",
        "payload": {"invoice_id": 42, "status": "paid", "amount": "19.80", "fiat": "USD"},
    }
).encode()


def cryptopay_signature(token: str, body: bytes) -> str:
    return hmac.new(hashlib.sha256(token.encode()).digest(), body, hashlib.sha256).hexdigest()


def test_cryptopay_valid_signature() -> None:
    signature = cryptopay_signature(CP_TOKEN, CP_BODY)
    assert len(signature) == 64
    assert verify_cryptopay(CP_TOKEN, CP_BODY, signature) is True
    assert verify_cryptopay(CP_TOKEN, CP_BODY, signature.upper()) is True


def test_cryptopay_key_is_the_token_digest_not_the_token() -> None:
    wrong_key = hmac.new(CP_TOKEN.encode(), CP_BODY, hashlib.sha256).hexdigest()
    assert verify_cryptopay(CP_TOKEN, CP_BODY, wrong_key) is False


def test_cryptopay_signature_is_over_the_raw_body_not_a_reserialisation() -> None:
    reserialised = json.dumps(json.loads(CP_BODY), separators=(",", ":")).encode()
    assert reserialised != CP_BODY
    assert verify_cryptopay(CP_TOKEN, CP_BODY, cryptopay_signature(CP_TOKEN, reserialised)) is False


def test_cryptopay_refusals() -> None:
    signature = cryptopay_signature(CP_TOKEN, CP_BODY)
    flipped = _flip(signature[0]) + signature[1:]
    assert verify_cryptopay(CP_TOKEN, CP_BODY, flipped) is False
    assert verify_cryptopay(CP_TOKEN + "x", CP_BODY, signature) is False
    assert verify_cryptopay(CP_TOKEN, CP_BODY.replace(b"19.80", b"19.81"), signature) is False
    assert verify_cryptopay(CP_TOKEN, CP_BODY, signature[:-1]) is False
    assert verify_cryptopay(CP_TOKEN, CP_BODY, "") is False
    assert verify_cryptopay(CP_TOKEN, CP_BODY, None) is False
    assert verify_cryptopay(None, CP_BODY, signature) is False
    assert verify_cryptopay("", CP_BODY, cryptopay_signature("", CP_BODY)) is False


def test_non_ascii_cryptopay_signature_is_false() -> None:
    assert verify_cryptopay(CP_TOKEN, CP_BODY, "é" * 64) is False


# --------------------------------------------- the provider interface (verify_callback)
def _provider(secret: str | None) -> KryptoExpressProvider:
    return KryptoExpressProvider(
        "https://kx.invalid/api", "key", callback_url=None, callback_secret=secret
    )


def test_verify_callback_reads_a_signed_body_and_rejects_the_rest() -> None:
    status = _provider(SECRET).verify_callback(RAW, {"X-Signature": SIGNATURE})
    assert status is not None and status.provider == "kryptoexpress"
    for secret, headers in (
        (SECRET, {}),
        (SECRET, {"X-Signature": "0" * 128}),
        (None, {"X-Signature": SIGNATURE}),  # no secret configured: fail closed
    ):
        with pytest.raises(CallbackRejected) as rejected:
            _provider(secret).verify_callback(RAW, headers)
        assert rejected.value.reason == "bad_signature"
        assert not isinstance(rejected.value, CallbackMalformed)


def test_verify_callback_calls_a_signed_non_payment_malformed() -> None:
    for body in (b"not json", b'{"id": 1}', b"[]"):
        signature = kryptoexpress_signature(SECRET, body)
        with pytest.raises(CallbackMalformed):
            _provider(SECRET).verify_callback(body, {"X-Signature": signature})
