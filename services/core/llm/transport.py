"""One HTTP attempt against a provider over a pooled httpx client (one pool per provider,
explicit connect / read / per-attempt timeouts), its outcome sorted into `Completion`,
`Transient` (worth retrying) or `Refused` (not). API keys never leave in an error text."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from services.core.llm.request import Request
from services.core.llm.settings import ProviderSettings
from services.core.llm.wire import (
    Adapter,
    Completion,
    HttpCall,
    RateInfo,
    Refused,
    SSEDecoder,
    Transient,
    error_message,
)

# 408 and 409 (OpenAI's lock timeout) are worth another try, as the providers' SDKs do.
_RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Exchange:
    completion: Completion
    rate: RateInfo


class Transport:
    def __init__(self) -> None:
        self._pools: dict[str, httpx.AsyncClient] = {}

    def pool(self, provider: str, settings: ProviderSettings) -> httpx.AsyncClient:
        client = self._pools.get(provider)
        if client is None:
            timeout = httpx.Timeout(connect=settings.connect_timeout, read=settings.read_timeout,
                                    write=settings.read_timeout, pool=settings.attempt_timeout)
            limits = httpx.Limits(max_connections=settings.max_concurrency,
                                  max_keepalive_connections=settings.max_concurrency)
            client = httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)
            self._pools[provider] = client
        return client

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for client in pools.values():
            await client.aclose()

    async def send(
        self, adapter: Adapter, request: Request, settings: ProviderSettings, api_key: str,
        on_sent: Callable[[], None] | None = None,
    ) -> Exchange:
        """One request; `on_sent` runs as its headers are written (after any connect)."""
        call = adapter.build(request, settings, api_key)
        http = self.pool(adapter.name, settings)
        answered = False

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            if on_sent is not None and event.endswith("send_request_headers.started"):
                on_sent()

        try:
            async with asyncio.timeout(settings.attempt_timeout):
                async with http.stream("POST", call.url, headers=call.headers, json=call.body,
                                       extensions={"trace": trace}) as response:
                    answered = True
                    return await _read(adapter, request, call, response)
        except Transient as exc:
            raise _redacted(exc, api_key) from None
        except Refused as exc:
            raise Refused(exc.status, _redact(exc.detail, api_key)) from None
        except TimeoutError:
            raise Transient("timeout", f"no complete answer in {settings.attempt_timeout}s"
                            ) from None
        except httpx.TimeoutException as exc:
            raise Transient("timeout", type(exc).__name__) from None
        except httpx.TransportError as exc:
            kind = "stream_cut" if answered else "connection"
            raise Transient(kind, _redact(f"{type(exc).__name__}: {exc}", api_key)) from None


async def _read(
    adapter: Adapter, request: Request, call: HttpCall, response: httpx.Response
) -> Exchange:
    headers = response.headers
    if not 200 <= response.status_code < 300:
        _raise_for(adapter, response.status_code, headers, await response.aread())
    rate = adapter.rate_info(headers)
    try:
        if not call.stream:
            return Exchange(adapter.parse(json.loads(await response.aread())), rate)
        parser = adapter.stream_parser(request)
        decoder = SSEDecoder()
        async for line in response.aiter_lines():
            for event, data in decoder.feed(line):
                parser.feed(event, data)
        for event, data in decoder.feed(""):
            parser.feed(event, data)
        return Exchange(parser.finish(), rate)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        # A 200 whose body is not what the provider documents: a proxy or a half-sent
        # body; another attempt may well succeed.
        raise Transient("bad_response", f"{type(exc).__name__}: {exc}"[:200]) from None


def _raise_for(adapter: Adapter, status: int, headers: Mapping[str, str], raw: bytes) -> None:
    body: Any = None
    with contextlib.suppress(ValueError):
        body = json.loads(raw)
    detail = error_message(body) or raw[:200].decode(errors="replace")
    hint = headers.get("x-should-retry")  # OpenAI's and Anthropic's explicit verdict
    if hint == "false" or (hint != "true" and status < 500 and status not in _RETRY_STATUSES):
        raise Refused(status, detail)
    kind = "rate_limited" if status == 429 else "timeout" if status == 408 else "server_error"
    raise Transient(kind, f"HTTP {status}: {detail}", status=status,
                    retry_after=adapter.retry_after(headers, body), rate=adapter.rate_info(headers))


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _redacted(exc: Transient, secret: str) -> Transient:
    return Transient(exc.kind, _redact(exc.detail, secret), status=exc.status,
                     retry_after=exc.retry_after, rate=exc.rate)
