"""What the gateway sells: tiers, plans, providers and models, with SPEC's tables as the shipped default.

Everything here is immutable configuration; `load_settings` builds a `Catalog` from these defaults
plus a TOML file, and `--demo` swaps every deployment for the bundled demo upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

ModelKind = Literal["chat", "embedding"]
ProviderFormat = Literal["openai", "anthropic", "gemini"]
PROVIDER_FORMATS: tuple[str, ...] = ("openai", "anthropic", "gemini")


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    credits_per_day: int
    requests_per_minute: int
    max_keys: int
    # With Redis unreachable and the lease in hand spent: refuse with a 503 (False, the default) or
    # admit on this worker's own count, up to 1/N of the daily credits, settled with Redis on its return.
    fail_open: bool = False
    # What a chat call that leaves `stream` out gets when the client declared nothing either
    # (`validation.default_stream`): SSE (True, SPEC's default) or JSON.
    default_stream: bool = True


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream: where to send, which credential to attach (read from the environment, never the request)."""

    name: str
    base_url: str
    api_key_env: str | None = None
    format: ProviderFormat = "openai"
    # Request-header name prefixes relayed to this upstream (the demo upstream's `x-demo-` knobs).
    pass_headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Deployment:
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    tier: str
    context_length: int
    max_output_tokens: int
    deployments: tuple[Deployment, ...]
    kind: ModelKind = "chat"
    created: int = 1_735_689_600  # 2025-01-01, a stable value for OpenAI's `created`
    # SPEC's temperature/top_p defaults are added to calls that leave them out; False for models
    # that reject them (reasoning models whose provider allows only its own values).
    sampling_defaults: bool = True
    # A few words on what the model is for, shown beside it in /v1/models and on the Models page;
    # "" when the catalog says nothing (a model added by a settings file without `use_case`).
    use_case: str = ""
    # Served on `/v1/completions` (legacy completions) too: only where every deployment's provider,
    # OpenAI-format, serves that endpoint for it (checked when the catalog is built).
    completions: bool = False

    @property
    def publisher(self) -> str:
        return self.id.split("/", 1)[0] if "/" in self.id else self.id


@dataclass(frozen=True, slots=True)
class Catalog:
    tiers: Mapping[str, int]
    plans: Mapping[str, Plan]
    providers: Mapping[str, Provider]
    models: Mapping[str, Model]
    default_credits: int = 1
    fallback_model: str | None = "meta/llama-3.1-8b-instruct"
    _costs: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        costs = {m.id: self.tiers.get(m.tier, self.default_credits) for m in self.models.values()}
        object.__setattr__(self, "_costs", MappingProxyType(costs))

    def cost(self, model_id: str) -> int:
        """Credits per call; a model absent from the map costs the default."""
        return self._costs.get(model_id, self.default_credits)

    def with_all_models_on(self, provider: Provider) -> Catalog:
        """The same catalog with every model served by one provider under its own id (`--demo`).

        The demo upstream serves legacy completions for any model: every chat model is flagged for them.
        """
        models = {
            mid: replace(m, deployments=(Deployment(provider.name, mid),), completions=m.kind == "chat")
            for mid, m in self.models.items()
        }
        return replace(self, providers={**self.providers, provider.name: provider}, models=models)


DEFAULT_TIERS: Mapping[str, int] = {"cheap": 1, "standard": 2, "large": 3, "premium": 5}

DEFAULT_PLANS: Mapping[str, Plan] = {
    "free": Plan("free", credits_per_day=100, requests_per_minute=40, max_keys=1),
    "starter": Plan("starter", credits_per_day=500, requests_per_minute=80, max_keys=5),
    "pro": Plan("pro", credits_per_day=2_000, requests_per_minute=200, max_keys=20),
}

NVIDIA = Provider("nvidia", "https://integrate.api.nvidia.com/v1", api_key_env="NVIDIA_API_KEY")

# (id, tier, context length, max output tokens, kind)
_SHIPPED: tuple[tuple[str, str, int, int, ModelKind], ...] = (
    ("google/gemma-3n-e4b-it", "cheap", 32_768, 8_192, "chat"),
    ("microsoft/phi-4-mini-instruct", "cheap", 131_072, 4_096, "chat"),
    ("mistralai/mistral-small-24b-instruct", "cheap", 32_768, 4_096, "chat"),
    ("ibm/granite-3.3-8b-instruct", "cheap", 131_072, 8_192, "chat"),
    ("meta/llama-3.1-8b-instruct", "cheap", 131_072, 4_096, "chat"),
    ("nvidia/nv-embedqa-e5-v5", "cheap", 512, 0, "embedding"),
    ("nvidia/nemotron-nano-3-30b-a3b", "standard", 131_072, 8_192, "chat"),
    ("deepseek-ai/deepseek-r1-distill-qwen-32b", "standard", 131_072, 8_192, "chat"),
    ("mistralai/mistral-medium-3-instruct", "standard", 131_072, 8_192, "chat"),
    ("meta/llama-3.3-70b-instruct", "large", 131_072, 4_096, "chat"),
    ("meta/llama-4-scout-17b-16e-instruct", "large", 131_072, 4_096, "chat"),
    ("qwen/qwen3.5-122b-a10b", "large", 262_144, 16_384, "chat"),
    ("z-ai/glm5", "large", 131_072, 16_384, "chat"),
    ("moonshotai/kimi-k2-thinking", "large", 262_144, 16_384, "chat"),
    ("nvidia/llama-3.3-nemotron-super-49b-v1", "large", 131_072, 4_096, "chat"),
    ("moonshotai/kimi-k2.5", "premium", 262_144, 16_384, "chat"),
    ("qwen/qwen3-coder-480b-a35b-instruct", "premium", 262_144, 16_384, "chat"),
    ("deepseek-ai/deepseek-v3.2", "premium", 131_072, 8_192, "chat"),
    ("nvidia/llama-3.1-nemotron-ultra-253b-v1", "premium", 131_072, 4_096, "chat"),
    ("mistralai/mistral-large-3-675b-instruct-2512", "premium", 262_144, 8_192, "chat"),
)

# Thinking models whose vendor's API refuses any temperature but its own (Moonshot's Kimi K2.5 answers
# "invalid temperature: only 1 is allowed for this model"; K2 Thinking asks for 1.0 too): SPEC's
# 0.7 / 0.9 are not added, and the provider's defaults apply. A client's own values still pass.
_NO_SAMPLING_DEFAULTS = frozenset({"moonshotai/kimi-k2-thinking", "moonshotai/kimi-k2.5"})

# What each shipped model is for, in a few words from its publisher's own description of it (no
# benchmark claims): a reader choosing a model on the Models page sees it beside the price.
_USE_CASES: Mapping[str, str] = {
    "google/gemma-3n-e4b-it": "Efficient chat, built for on-device use",
    "microsoft/phi-4-mini-instruct": "Fast, low-cost chat and simple tasks",
    "mistralai/mistral-small-24b-instruct": "Low-latency chat and function calling",
    "ibm/granite-3.3-8b-instruct": "Business tasks: RAG, summaries, tool use",
    "meta/llama-3.1-8b-instruct": "Fast, low-cost multilingual chat",
    "nvidia/nv-embedqa-e5-v5": "Embeddings for search and retrieval",
    "nvidia/nemotron-nano-3-30b-a3b": "Efficient reasoning and agentic tasks",
    "deepseek-ai/deepseek-r1-distill-qwen-32b": "Multi-step reasoning, math and code",
    "mistralai/mistral-medium-3-instruct": "Coding, STEM and enterprise chat",
    "meta/llama-3.3-70b-instruct": "General multilingual chat and dialogue",
    "meta/llama-4-scout-17b-16e-instruct": "Multimodal chat, document summarization",
    "qwen/qwen3.5-122b-a10b": "Reasoning, coding and agent tasks",
    "z-ai/glm5": "Coding and long-horizon agent tasks",
    "moonshotai/kimi-k2-thinking": "Step-by-step reasoning with tool use",
    "nvidia/llama-3.3-nemotron-super-49b-v1": "Reasoning, RAG and tool calling",
    "moonshotai/kimi-k2.5": "Multimodal agents and coding",
    "qwen/qwen3-coder-480b-a35b-instruct": "Agentic coding and code generation",
    "deepseek-ai/deepseek-v3.2": "Reasoning and agentic tool use",
    "nvidia/llama-3.1-nemotron-ultra-253b-v1": "Advanced reasoning, RAG and tool calling",
    "mistralai/mistral-large-3-675b-instruct-2512": "General-purpose multilingual chat",
}

DEFAULT_MODELS: Mapping[str, Model] = {
    mid: Model(mid, tier, ctx, out, (Deployment(NVIDIA.name, mid),), kind,
               sampling_defaults=mid not in _NO_SAMPLING_DEFAULTS, use_case=_USE_CASES[mid])
    for mid, tier, ctx, out, kind in _SHIPPED
}


def default_catalog() -> Catalog:
    return Catalog(
        tiers=dict(DEFAULT_TIERS),
        plans=dict(DEFAULT_PLANS),
        providers={NVIDIA.name: NVIDIA},
        models=dict(DEFAULT_MODELS),
    )
