"""Local stand-ins for the LLM providers the agent CLIs talk to: Anthropic Messages SSE,
OpenAI Responses SSE and Gemini streamGenerateContent, one HTTP server for all three, with
a scripted conversation (one tool call that edits a file, then a final text) and faults."""

from tests.support.fake_providers.server import FakeProvider, Fault, Recorded
from tests.support.fake_providers.turns import Script

__all__ = ["FakeProvider", "Fault", "Recorded", "Script"]
