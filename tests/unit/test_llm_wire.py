"""Wire details of the LLM client without a network: rate-limit and Retry-After headers,
server-sent events, error classification, the cache key, request validation."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from services.core.config import load_settings
from services.core.errors import ConfigError, Reject, Retry
from services.core.llm.anthropic import Anthropic
from services.core.llm.errors import (
    ProviderFailed,
    ProviderRejected,
    ProviderUnavailable,
    as_handler_control,
)
from services.core.llm.google import Google
from services.core.llm.openai import OpenAI
from services.core.llm.request import ChatMessage, Request, cache_key
from services.core.llm.settings import LLMSettings, ProviderSettings
from services.core.llm.transport import _raise_for
from services.core.llm.wire import (
    Refused,
    SSEDecoder,
    Transient,
    header_retry_after,
    parse_duration,
    seconds_until,
)


def test_retry_after_forms() -> None:
    assert header_retry_after({"retry-after": "7"}) == 7.0
    assert header_retry_after({"retry-after": "7", "retry-after-ms": "250"}) == 0.25
    later = formatdate(time.time() + 30, usegmt=True)
    assert 28.0 <= (header_retry_after({"retry-after": later}) or 0) <= 30.0
    assert header_retry_after({"retry-after": "soon"}) is None
    assert header_retry_after({}) is None


def test_openai_and_google_durations() -> None:
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1h2m3s") == 3723.0
    assert parse_duration("6 minutes") is None


def test_anthropic_reset_instants() -> None:
    assert seconds_until("2030-01-01T00:00:10Z", now=1893456000.0) == 10.0
    assert seconds_until("2030-01-01T00:00:10+00:00", now=1893456020.0) == 0.0
    assert seconds_until("2030-01-01T00:00:10", now=0.0) is None  # no zone: not trusted


def test_rate_info_per_provider() -> None:
    openai = OpenAI().rate_info({"x-ratelimit-remaining-requests": "3",
                                 "x-ratelimit-reset-requests": "1.5s",
                                 "x-ratelimit-remaining-tokens": "900",
                                 "x-ratelimit-reset-tokens": "6m0s"})
    assert (openai.remaining_requests, openai.requests_reset) == (3, 1.5)
    assert (openai.remaining_tokens, openai.tokens_reset) == (900, 360.0)
    anthropic = Anthropic().rate_info({"anthropic-ratelimit-requests-remaining": "0"})
    assert anthropic.remaining_requests == 0 and anthropic.requests_reset is None


def test_google_retry_delay_comes_from_the_body() -> None:
    body = {"error": {"code": 429, "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}}
    assert Google().retry_after({}, body) == 12.0
    assert Google().retry_after({"retry-after": "3"}, body) == 3.0


def test_sse_decoder_follows_the_event_stream_rules() -> None:
    decoder = SSEDecoder()
    lines = [": comment", "event: a", "data: one", "data: two", "", "data: x", "",
             "retry: 5", ""]
    events = [event for line in lines for event in decoder.feed(line)]
    assert events == [("a", "one\ntwo"), ("message", "x")]


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"retry-after": "2"}, ("rate_limited", 2.0)),
        (500, {}, ("server_error", None)),
        (529, {}, ("server_error", None)),
        (408, {}, ("timeout", None)),
        (409, {}, ("server_error", None)),
        (400, {"x-should-retry": "true"}, ("server_error", None)),
    ],
)
def test_retryable_statuses(status: int, headers: dict[str, str],
                            expected: tuple[str, float | None]) -> None:
    with pytest.raises(Transient) as caught:
        _raise_for(OpenAI(), status, headers, b'{"error": {"message": "nope"}}')
    assert (caught.value.kind, caught.value.retry_after) == expected
    assert "nope" in caught.value.detail


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_four_hundreds_that_will_not_change_are_refused(status: int) -> None:
    with pytest.raises(Refused) as caught:
        _raise_for(Anthropic(), status, {}, b'{"type": "error", "error": {"message": "bad"}}')
    assert (caught.value.status, caught.value.detail) == (status, "bad")


def test_should_retry_false_wins_over_a_5xx() -> None:
    with pytest.raises(Refused):
        _raise_for(OpenAI(), 503, {"x-should-retry": "false"}, b"oops")


def test_cache_key_folds_whitespace_and_nothing_else() -> None:
    base = Request(provider="openai", model="m", prompt="fix  the\n bug", system="be\tterse")
    same = Request(provider="openai", model="m", prompt=" fix the bug ", system="be terse",
                   stream=True, cache=False, deadline_seconds=3.0)
    assert cache_key(base) == cache_key(same)
    for other in (
        Request(provider="openai", model="m", prompt="fix the bugs", system="be terse"),
        Request(provider="openai", model="m2", prompt="fix the bug", system="be terse"),
        Request(provider="anthropic", model="m", prompt="fix the bug", system="be terse"),
        Request(provider="openai", model="m", prompt="fix the bug", system="be terse",
                temperature=0.5),
        Request(provider="openai", model="m", prompt="fix the bug", system="be terse",
                max_tokens=10),
        Request(provider="openai", model="m", system="be terse",
                messages=(ChatMessage(role="assistant", content="fix the bug"),
                          ChatMessage(role="user", content="ok"))),
    ):
        assert cache_key(other) != cache_key(base)


@pytest.mark.parametrize(
    "request_",
    [
        Request(provider="mistral", model="m", prompt="x"),
        Request(provider="openai", model="m", system="only a system prompt"),
        Request(provider="openai", model="m", prompt="x", max_tokens=0),
        Request(provider="anthropic", model="m", prompt="x", api="chat"),
        Request(provider="openai", model="m", prompt="x", stop=("END",)),
    ],
    ids=["provider", "no-user", "max-tokens", "api", "responses-stop"],
)
def test_invalid_requests_fail_before_anything_is_sent(request_: Request) -> None:
    with pytest.raises(ValueError, match=r"."):
        request_.validate()


def test_keys_go_in_headers_never_in_urls() -> None:
    settings = ProviderSettings(base_url="https://example.test/", key_name="k")
    request = Request(provider="google", model="gemini", prompt="x", stream=True)
    call = Google().build(request, settings, "AIzaSECRET")
    assert "AIzaSECRET" not in call.url and call.headers["x-goog-api-key"] == "AIzaSECRET"
    assert call.url == ("https://example.test/v1beta/models/gemini:streamGenerateContent"
                        "?alt=sse")


def test_job_handlers_retry_later_or_reject() -> None:
    """The breaker's error asks the job to come back after the open period; a refusal
    dead-letters it; exhausted retries come back after the provider's Retry-After."""
    later = as_handler_control(ProviderUnavailable("openai", 12.5))
    assert isinstance(later, Retry) and later.delay == 12.5
    assert isinstance(as_handler_control(ProviderRejected("openai", 400, "bad")), Reject)
    failed = as_handler_control(ProviderFailed("google", "rate_limited", 3, "429", 30.0))
    assert isinstance(failed, Retry) and failed.delay == 30.0
    assert not ProviderUnavailable("openai", 1.0).non_retryable


def test_settings_from_the_environment() -> None:
    """A provider named in ZLOTH_LLM_PROVIDERS keeps the defaults it does not override;
    an unknown provider or field is a ConfigError that names it."""
    env = {"ZLOTH_LLM_PROVIDERS": '{"anthropic": {"requests_per_window": 50}}',
           "ZLOTH_LLM_CACHE_TTL_SECONDS": "600"}
    settings = load_settings(LLMSettings, env, service="llm")
    anthropic = settings.provider("anthropic")
    assert (anthropic.requests_per_window, anthropic.key_name) == (50, "llm.anthropic")
    assert anthropic.base_url == "https://api.anthropic.com"
    assert settings.provider("google").base_url.startswith("https://generativelanguage")
    assert settings.cache_ttl_seconds == 600.0
    for bad, named in (('{"mistral": {}}', "mistral"), ('{"openai": {"rpm": 5}}', "rpm")):
        with pytest.raises(ConfigError, match=named):
            load_settings(LLMSettings, {"ZLOTH_LLM_PROVIDERS": bad}, service="llm")
