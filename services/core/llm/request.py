"""The provider-neutral request and response of one LLM call, and the cache key of a
request (provider, model, whitespace-folded prompt, output-shaping parameters)."""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

Role = Literal["system", "user", "assistant"]
PROVIDERS = ("openai", "anthropic", "google")


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Role
    content: str


class Request(msgspec.Struct, frozen=True, kw_only=True):
    provider: str  # openai | anthropic | google
    model: str
    prompt: str = ""  # shorthand for one user message after `messages`
    messages: tuple[ChatMessage, ...] = ()
    system: str = ""
    max_tokens: int = 1024
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    api: str = ""  # openai: "responses" (default) or "chat"; others: ""
    stream: bool = False  # use the provider's streaming endpoint; the result is the same
    cache: bool = True  # False when the caller wants sampling variety
    deadline_seconds: float | None = None  # None: the client's default

    def conversation(self) -> list[ChatMessage]:
        """Messages in order, `system` first when given, `prompt` last."""
        found = [ChatMessage(role="system", content=self.system)] if self.system else []
        found.extend(self.messages)
        if self.prompt:
            found.append(ChatMessage(role="user", content=self.prompt))
        return found

    def validate(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r} (one of {PROVIDERS})")
        if not any(m.role == "user" for m in self.conversation()):
            raise ValueError("a request needs a prompt or at least one user message")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.api not in ("", "responses", "chat") or (self.api and self.provider != "openai"):
            raise ValueError(f"api {self.api!r} is not one of {self.provider}'s APIs")
        if self.stop and self.provider == "openai" and self.api != "chat":
            raise ValueError("OpenAI's Responses API has no stop sequences: use api='chat'")

    def estimated_tokens(self) -> int:
        # ~4 characters per token, plus the most the reply may use: what a provider
        # counts against tokens-per-minute before it knows the real figure.
        chars = sum(len(m.content) for m in self.conversation())
        return chars // 4 + 1 + self.max_tokens


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input: int = 0
    output: int = 0


class Response(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    usage: Usage
    provider: str
    model: str
    cached: bool = False
    attempts: int = 0  # provider requests this call made (0 when served from the cache)
    finish_reason: str = ""


def fold(text: str) -> str:
    """Whitespace folded: runs of spaces, tabs and newlines become one space."""
    return " ".join(text.split())


def cache_key(request: Request) -> str:
    """Hash of everything that shapes the output; `stream`, `cache` and the deadline
    do not. Prompts differing only in whitespace share a key, by design."""
    canonical = {
        "v": 1,
        "provider": request.provider,
        "api": request.api or ("responses" if request.provider == "openai" else ""),
        "model": request.model,
        "messages": [[m.role, fold(m.content)] for m in request.conversation()],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": list(request.stop),
    }
    return hashlib.sha256(msgspec.json.encode(canonical)).hexdigest()
