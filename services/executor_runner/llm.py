"""The runner's LLM client (for the patch agent): settings from `ZLOTH_LLM_*`, API keys
from the encrypted secret store when ZLOTH_MASTER_KEY is set, else from the provider's
usual variable in the runner's environment (OPENAI_API_KEY, ANTHROPIC_API_KEY,
GEMINI_API_KEY) — the same ones the CLIs are given."""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.core.bus import Bus
from services.core.config import load_settings
from services.core.llm import Keyring, LLMClient, LLMSettings, Secret, SecretStore
from services.core.llm.secrets import ENV as MASTER_KEY_VAR

__all__ = ["EnvKeys", "make_client"]

KEY_VARS = {"llm.openai": "OPENAI_API_KEY", "llm.anthropic": "ANTHROPIC_API_KEY",
            "llm.google": "GEMINI_API_KEY"}


class EnvKeys:
    """Keys by secret name, read from variables (for a laptop without a secret store)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    async def get(self, name: str) -> Secret | None:
        value = self._environ.get(KEY_VARS.get(name, ""), "")
        return Secret(value) if value else None


def make_client(bus: Bus, instance_id: str, environ: Mapping[str, str] | None = None
                ) -> LLMClient:
    env = os.environ if environ is None else environ
    settings = load_settings(LLMSettings, env, service="llm")
    if not settings.instance_id:
        settings = load_settings(LLMSettings, env, service="llm", instance_id=instance_id)
    if env.get(MASTER_KEY_VAR):
        return LLMClient(settings, bus, SecretStore(bus, Keyring.from_env(env)))
    return LLMClient(settings, bus, EnvKeys(dict(env)))
