"""What an LLM call can raise; each error says whether the job may try again, and when.

    ZlothError
    └── LLMError                 .provider, .non_retryable, .next_retry_delay
        ├── ProviderUnavailable  the breaker is open: failed fast, nothing was sent
        ├── ProviderFailed       retryable outcomes (429, 5xx, timeouts, cut streams) kept
        │   │                    coming until the attempt cap or the time budget ran out
        │   └── DeadlineExceeded the caller's deadline passed first
        └── ProviderRejected     a 4xx that will not change, or no API key: do not retry
"""

from __future__ import annotations

from services.core.errors import HandlerControl, Reject, Retry, ZlothError


class LLMError(ZlothError):
    non_retryable: bool = False

    def __init__(self, provider: str, message: str, next_retry_delay: float = 0.0) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.next_retry_delay = next_retry_delay


class ProviderUnavailable(LLMError):
    """The provider's circuit breaker is open in every replica; try after `retry_after`."""

    def __init__(self, provider: str, retry_after: float) -> None:
        super().__init__(
            provider, f"circuit breaker open, retry in {retry_after:.1f}s", retry_after
        )
        self.retry_after = retry_after


class ProviderFailed(LLMError):
    """Every attempt ended in a retryable outcome; `kind` is the last one's."""

    def __init__(
        self, provider: str, kind: str, attempts: int, detail: str, next_retry_delay: float
    ) -> None:
        super().__init__(
            provider, f"{kind} after {attempts} attempt(s): {detail}", next_retry_delay
        )
        self.kind = kind
        self.attempts = attempts


class DeadlineExceeded(ProviderFailed):
    pass


class ProviderRejected(LLMError):
    """The provider refused the request itself (400, 401, 403, 404, …)."""

    non_retryable = True

    def __init__(self, provider: str, status: int, detail: str) -> None:
        super().__init__(provider, f"rejected ({status}): {detail}")
        self.status = status


def as_handler_control(exc: LLMError) -> HandlerControl:
    """What a job handler raises for `exc`: Retry(delay) to come back later, or Reject."""
    if exc.non_retryable:
        return Reject(str(exc))
    return Retry(max(exc.next_retry_delay, 1.0), str(exc))
