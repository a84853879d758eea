"""Which `WireFormat` speaks for a provider: by `Provider.format`, its name in the settings.

OpenAI's format has none: the pool sends the chat body as it is and the relay passes the
answer's bytes through, the path every call took before other formats existed.
"""

from __future__ import annotations

from collections.abc import Mapping

from clexproxy.protocols.anthropic_wire import ANTHROPIC
from clexproxy.protocols.chunks import WireFormat
from clexproxy.protocols.gemini_wire import GEMINI

WIRES: Mapping[str, WireFormat] = {ANTHROPIC.name: ANTHROPIC, GEMINI.name: GEMINI}
