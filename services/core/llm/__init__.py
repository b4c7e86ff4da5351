"""The LLM client: every direct call zloth makes to OpenAI, Anthropic or Google goes
through `LLMClient.complete()` — rate limits, retries, a shared circuit breaker, an output
cache and metrics. Errors are drawn in errors.py; secrets live in secrets.py."""

from services.core.llm.client import KeySource, LLMClient
from services.core.llm.errors import (
    DeadlineExceeded,
    LLMError,
    ProviderFailed,
    ProviderRejected,
    ProviderUnavailable,
    as_handler_control,
)
from services.core.llm.request import ChatMessage, Request, Response, Usage, cache_key
from services.core.llm.secrets import Keyring, Secret, SecretError, SecretStore
from services.core.llm.settings import LLMSettings, ProviderSettings

__all__ = [
    "ChatMessage",
    "DeadlineExceeded",
    "KeySource",
    "Keyring",
    "LLMClient",
    "LLMError",
    "LLMSettings",
    "ProviderFailed",
    "ProviderRejected",
    "ProviderSettings",
    "ProviderUnavailable",
    "Request",
    "Response",
    "Secret",
    "SecretError",
    "SecretStore",
    "Usage",
    "as_handler_control",
    "cache_key",
]
