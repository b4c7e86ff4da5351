"""Settings of the LLM client: per-provider endpoints, limits and timeouts; retries,
circuit breaker and cache. Read from `ZLOTH_LLM_*` (`providers` is a JSON object whose
entries override the defaults of the providers they name)."""

from __future__ import annotations

import msgspec


class ProviderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    base_url: str = ""  # "": the provider's public API
    key_name: str = ""  # the secret-store entry holding the API key; "": llm.<provider>
    # Client-side rate limit of THIS replica (see ratelimit.py): 0 disables a dimension;
    # `rate_limiting` off leaves only the concurrency cap (no budgets, headers or pauses).
    rate_limiting: bool = True
    requests_per_window: int = 0
    tokens_per_window: int = 0
    window_seconds: float = 60.0
    burst: int = 0  # requests allowed at once; 0: a second's worth (at least 1)
    headroom: float = 0.05  # aim this fraction under the limit (clock skew, jitter)
    max_concurrency: int = 16
    respect_rate_headers: bool = True  # pause when the provider says the budget is spent
    connect_timeout: float = 10.0
    read_timeout: float = 120.0  # between two bytes (a stream's chunks included)
    attempt_timeout: float = 600.0  # one request, from connect to the last byte
    anthropic_version: str = "2023-06-01"


DEFAULT_PROVIDERS: dict[str, ProviderSettings] = {
    "openai": ProviderSettings(base_url="https://api.openai.com", key_name="llm.openai"),
    "anthropic": ProviderSettings(
        base_url="https://api.anthropic.com", key_name="llm.anthropic"
    ),
    "google": ProviderSettings(
        base_url="https://generativelanguage.googleapis.com", key_name="llm.google"
    ),
}


class LLMSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    providers: dict[str, ProviderSettings] = {}
    deadline_seconds: float = 900.0  # default per call, limiter waits and retries included
    max_attempts: int = 5
    max_retry_seconds: float = 300.0  # time budget of one call's attempts and waits
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    breaker_failures: int = 5  # consecutive failures within the window that open it
    breaker_window_seconds: float = 30.0
    breaker_open_seconds: float = 30.0
    breaker_probe_seconds: float = 0.0  # how long a half-open probe may take; 0: attempt_timeout
    cache_ttl_seconds: float = 3600.0  # 0 disables the cache
    key_cache_seconds: float = 60.0  # how long a decrypted API key is reused
    instance_id: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.providers) - set(DEFAULT_PROVIDERS))
        if unknown:
            raise ValueError(f"providers: unknown {unknown}, expected {sorted(DEFAULT_PROVIDERS)}")

    def provider(self, name: str) -> ProviderSettings:
        default = DEFAULT_PROVIDERS[name]
        chosen = self.providers.get(name)
        if chosen is None:
            return default
        return msgspec.structs.replace(chosen, base_url=chosen.base_url or default.base_url,
                                       key_name=chosen.key_name or default.key_name)
