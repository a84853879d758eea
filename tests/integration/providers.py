"""A gateway whose catalog puts one model on a provider of another wire format (`ProviderUnderTest`), for the tests
of each provider format (Anthropic's Messages API, Gemini's generateContent) on the demo upstream.

Why one set-up: every provider format is tested the same way — the official openai client against a gateway whose
model sits on the demo upstream's endpoint for that format, a backup model on its OpenAI endpoint for the fallback,
the provider's credential in the settings' environment and the access log as JSON lines in memory — so the catalog,
the start and the wait for access lines are written once, and a format's tests differ only in what they assert.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any, Final

import openai
import orjson

from clexproxy.demo.upstream import DemoServer

from .conftest import GatewayFactory, RunningGateway

BACKUP: Final = "clex/backup"
PROMPT: Final[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]


@dataclass(frozen=True, slots=True)
class ProviderUnderTest:
    """One provider of a non-OpenAI `format` on the demo upstream, and the model the catalog puts on it."""

    name: str  # the catalog's provider table
    format: str
    key_env: str
    secret: str
    model: str
    upstream_model: str
    base_path: str = "/v1"  # where the demo upstream serves this format (its base URL ends in /v1)

    def catalog(self, url: str, fallback: bool) -> str:
        """The config: this provider's model and, on the demo's OpenAI endpoint, `BACKUP` (the fallback or not)."""
        base = url.removesuffix("/v1") + self.base_path
        return (
            f'[providers.{self.name}]\nbase_url = "{base}"\napi_key_env = "{self.key_env}"\n'
            f'format = "{self.format}"\npass_headers = ["x-demo-"]\n'
            f'[providers.local]\nbase_url = "{url}"\napi_key_env = "LOCAL_TEST_KEY"\npass_headers = ["x-demo-"]\n'
            f'[catalog]\nfallback_model = "{BACKUP if fallback else ""}"\n'
            f'[models."{self.model}"]\ntier = "standard"\n'
            f'deployments = [{{provider = "{self.name}", model = "{self.upstream_model}"}}]\n'
            f'[models."{BACKUP}"]\ntier = "cheap"\ndeployments = [{{provider = "local", model = "backup-m"}}]\n'
        )

    async def start(self, make_gateway: GatewayFactory, upstream: DemoServer, fallback: bool = True,
                    **settings: Any) -> tuple[RunningGateway, openai.AsyncOpenAI, io.BytesIO]:
        """A gateway on this catalog (JSON access lines into the returned buffer) and a client of a pro key."""
        access = io.BytesIO()
        gw = await make_gateway(config=self.catalog(upstream.url, fallback), demo=False, access_stream=access,
                                log_format="json", env={self.key_env: self.secret, "LOCAL_TEST_KEY": "local-key"},
                                **settings)
        key = await gw.add_key("acme", "pro")
        return gw, gw.client(key), access


async def access_lines(gw: RunningGateway, access: io.BytesIO, count: int) -> list[dict[str, Any]]:
    """The first `count` access-log lines, once written (settlement runs as the handler ends)."""
    for _ in range(500):  # bounded wait, not a timing assertion
        gw.gateway.access_log.flush()
        lines = access.getvalue().splitlines()
        if len(lines) >= count:
            return [orjson.loads(line) for line in lines[:count]]
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} access lines: {access.getvalue()!r}")
