"""Pure-core tests: retry classification and backoff (no loop, no socket, no clock)."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_client.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    InvalidRequestError,
    ProtocolError,
    RateLimitError,
    ServerError,
    StreamError,
    TotalTimeout,
    error_for_status,
)
from gateway_client.retry import (
    RetryPolicy,
    backoff_delay,
    is_retryable_error,
    is_retryable_status,
    parse_rate_reset,
    parse_retry_after,
    retry_delay,
    server_wait_hint,
    should_retry,
)

NOW = 1_800_000_000.0  # a fixed "wall clock" for the date forms


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *[(s, True) for s in (408, 429, 500, 502, 503, 504, 599)],
        *[(s, False) for s in (400, 401, 403, 404, 409, 422)],
    ],
)
def test_status_classification(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable
    assert is_retryable_error(error_for_status(status, b"")) is retryable


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (ConnectError("refused"), True),
        (ConnectTimeout("slow connect"), True),
        (ConnectionLost("dropped before first chunk"), True),
        (StreamError("in-stream 500", status=500), True),
        (StreamError("in-stream 400", status=400), False),
        (StreamError("no status"), False),
        (FirstTokenTimeout("slow"), False),
        (IdleTimeout("gap"), False),
        (TotalTimeout("total"), False),
        (ProtocolError("bad json"), False),
        (InvalidRequestError("bad body"), False),
        (AuthenticationError("no key", status=401), False),
        (BadRequestError("unknown model", status=400), False),
        (RateLimitError("slow down", status=429), True),
        (ServerError("oops", status=503), True),
    ],
)
def test_error_classification(error: Exception, retryable: bool) -> None:
    assert is_retryable_error(error) is retryable  # type: ignore[arg-type]


def test_should_retry_respects_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    err = ServerError("x", status=503)
    assert [should_retry(err, n, policy) for n in range(4)] == [True, True, False, False]
    assert not should_retry(err, 0, RetryPolicy(max_retries=0))


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3", NOW) == 3.0
    assert parse_retry_after(" 1.5 ", NOW) == 1.5
    date = email.utils.formatdate(NOW + 7, usegmt=True)
    assert parse_retry_after(date, NOW) == pytest.approx(7.0)
    past = email.utils.formatdate(NOW - 100, usegmt=True)
    assert parse_retry_after(past, NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("-5", NOW) == 0.0


def test_rate_reset_seconds_epoch_and_epoch_ms() -> None:
    assert parse_rate_reset("12", NOW) == 12.0
    assert parse_rate_reset(str(NOW + 20), NOW) == pytest.approx(20.0)
    assert parse_rate_reset(str(int((NOW + 5) * 1000)), NOW) == pytest.approx(5.0)
    assert parse_rate_reset(str(NOW - 50), NOW) == 0.0
    assert parse_rate_reset("nan", NOW) is None
    assert parse_rate_reset("x", NOW) is None


def test_server_wait_hint_prefers_retry_after() -> None:
    assert server_wait_hint({"Retry-After": "2", "X-RateLimit-Reset": "40"}, NOW) == 2.0
    assert server_wait_hint({"X-RateLimit-Reset": "40"}, NOW) == 40.0
    assert server_wait_hint({}, NOW) is None
    assert server_wait_hint(None, NOW) is None


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, max_wait=30.0)
    top = [backoff_delay(n, policy, lambda: 0.999999) for n in range(6)]
    assert top == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], rel=1e-5)
    assert [backoff_delay(n, policy, lambda: 0.0) for n in range(6)] == [0.0] * 6
    assert backoff_delay(2, policy, lambda: 0.5) == pytest.approx(1.0)


def test_retry_delay_uses_hint_capped_at_max_wait() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, max_wait=10.0)
    assert retry_delay(0, policy, lambda: 0.5, hint=3.0) == 3.0
    assert retry_delay(0, policy, lambda: 0.5, hint=120.0) == 10.0
    assert retry_delay(1, policy, lambda: 0.5, hint=None) == pytest.approx(0.5)


@given(st.integers(0, 10_000), st.floats(0, 1, exclude_max=True))
def test_backoff_never_exceeds_caps(attempt: int, r: float) -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=8.0, max_wait=5.0)
    delay = backoff_delay(attempt, policy, lambda: r)
    assert 0.0 <= delay <= 5.0


def test_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-0.1)
