"""The emulator's model catalogue: every id the LLM Gateway docs name, in `GET /v1/models` shape.

Pure data, no I/O. Ids come from the Mar-2026 docs list and the Oct-2026 additions
(reference/assemblyai.md section 3.8); models the docs report as removed stay listed and
servable but carry a non-zero ``retirement_date``. Context lengths, output limits and prices
are plausible placeholders for tests, not AssemblyAI's numbers: ``GET /v1/models`` on the real
gateway is authoritative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Unix timestamps (UTC midnight) of the removals reported in the docs.
_APR_2026 = 1775001600  # 2026-04-01
_JUN_2026 = 1780272000  # 2026-06-01
_JUL_2026 = 1782864000  # 2026-07-01
_AUG_2026 = 1785542400  # 2026-08-01


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One catalogue entry. ``creator`` decides provider-native details (finish reasons)."""

    id: str
    name: str
    creator: str  # "anthropic" | "openai" | "google" | "alibaba" | "moonshot"
    context_length: int
    max_completion_tokens: int
    prompt_price: float  # USD per million input tokens (placeholder)
    completion_price: float  # USD per million output tokens (placeholder)
    structured_outputs: bool = True
    retirement_date: int = 0

    @property
    def is_openai(self) -> bool:
        return self.creator == "openai"

    @property
    def is_claude(self) -> bool:
        return self.creator == "anthropic"


_PROVIDERS = {
    "anthropic": ("Anthropic", ["us", "eu"]),
    "openai": ("OpenAI", ["us"]),
    "google": ("Google", ["us", "eu"]),
    "alibaba": ("Alibaba", ["us"]),
    "moonshot": ("Moonshot AI", ["us"]),
}

_M = ModelInfo
MODELS: dict[str, ModelInfo] = {
    m.id: m
    for m in (
        # Anthropic
        _M("claude-sonnet-5", "Claude Sonnet 5", "anthropic", 200_000, 64_000, 3, 15, False),
        _M("claude-opus-4-7", "Claude Opus 4.7", "anthropic", 200_000, 32_000, 15, 75),
        _M("claude-opus-4-6", "Claude Opus 4.6", "anthropic", 200_000, 32_000, 15, 75),
        _M("claude-opus-4-5-20251101", "Claude Opus 4.5", "anthropic", 200_000, 32_000, 5, 25),
        _M("claude-sonnet-4-6", "Claude Sonnet 4.6", "anthropic", 200_000, 64_000, 3, 15),
        _M("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "anthropic", 200_000, 64_000, 3, 15),
        _M("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "anthropic", 200_000, 64_000, 1, 5),
        _M(
            "claude-opus-4-20250514",
            "Claude Opus 4",
            "anthropic",
            200_000,
            32_000,
            15,
            75,
            False,
            _JUN_2026,
        ),
        _M(
            "claude-sonnet-4-20250514",
            "Claude Sonnet 4",
            "anthropic",
            200_000,
            64_000,
            3,
            15,
            False,
            _JUN_2026,
        ),
        _M(
            "claude-3-haiku-20240307",
            "Claude 3 Haiku",
            "anthropic",
            200_000,
            4_096,
            0.25,
            1.25,
            False,
            _APR_2026,
        ),
        # OpenAI
        _M("gpt-5.6-luna", "GPT-5.6 Luna", "openai", 400_000, 128_000, 1.25, 10),
        _M("gpt-5.6-terra", "GPT-5.6 Terra", "openai", 400_000, 128_000, 1.25, 10),
        _M("gpt-5.5", "GPT-5.5", "openai", 400_000, 128_000, 1.25, 10),
        _M("gpt-5.2", "GPT-5.2", "openai", 400_000, 128_000, 1.25, 10),
        _M("gpt-5.1", "GPT-5.1", "openai", 400_000, 128_000, 1.25, 10),
        _M("gpt-5", "GPT-5", "openai", 400_000, 128_000, 1.25, 10),
        _M("gpt-5-mini", "GPT-5 mini", "openai", 400_000, 128_000, 0.25, 2),
        _M("gpt-5-nano", "GPT-5 nano", "openai", 400_000, 128_000, 0.05, 0.4),
        _M("gpt-4.1", "GPT-4.1", "openai", 1_047_576, 32_768, 2, 8),
        _M("gpt-oss-120b", "gpt-oss-120b", "openai", 131_072, 32_768, 0.15, 0.6, False),
        _M("gpt-oss-20b", "gpt-oss-20b", "openai", 131_072, 32_768, 0.05, 0.2, False),
        # Google
        _M("gemini-3.6-flash", "Gemini 3.6 Flash", "google", 1_048_576, 65_536, 0.5, 3),
        _M("gemini-3.5-flash", "Gemini 3.5 Flash", "google", 1_048_576, 65_536, 0.5, 3),
        _M("gemini-3.5-flash-lite", "Gemini 3.5 Flash-Lite", "google", 1_048_576, 65_536, 0.1, 0.4),
        _M("gemini-3-pro-preview", "Gemini 3 Pro Preview", "google", 1_048_576, 65_536, 2, 12),
        _M(
            "gemini-3-flash-preview",
            "Gemini 3 Flash Preview",
            "google",
            1_048_576,
            65_536,
            0.5,
            3,
            True,
            _JUL_2026,
        ),
        _M(
            "gemini-3.1-flash-lite-preview",
            "Gemini 3.1 Flash-Lite Preview",
            "google",
            1_048_576,
            65_536,
            0.1,
            0.4,
            True,
            _JUL_2026,
        ),
        _M("gemini-2.5-pro", "Gemini 2.5 Pro", "google", 1_048_576, 65_536, 1.25, 10),
        _M("gemini-2.5-flash", "Gemini 2.5 Flash", "google", 1_048_576, 65_536, 0.3, 2.5),
        _M("gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", "google", 1_048_576, 65_536, 0.1, 0.4),
        # Others
        _M("qwen3-next-80b-a3b", "Qwen3 Next 80B A3B", "alibaba", 131_072, 32_768, 0.15, 1.5),
        _M("qwen3-32B", "Qwen3 32B", "alibaba", 131_072, 32_768, 0.1, 0.3),
        _M("kimi-k2.5", "Kimi K2.5", "moonshot", 262_144, 32_768, 0.6, 2.5, True, _AUG_2026),
    )
}

SUPPORTED_PARAMETERS = [
    "max_tokens",
    "temperature",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "reasoning",
    "stream",
]


def model_entry(info: ModelInfo) -> dict[str, Any]:
    """The ``GET /v1/models`` entry for ``info``; every field the assemblyai SDK requires."""
    provider_name, regions = _PROVIDERS[info.creator]
    provider = {"id": info.creator, "name": provider_name}
    price = {
        "prompt": info.prompt_price,
        "completions": info.completion_price,
    }
    if info.is_claude:
        price |= {
            "input_cache_read": info.prompt_price / 10,
            "input_cache_write": info.prompt_price * 1.25,
            "input_cache_write_1h": info.prompt_price * 2,
        }
    pricing: dict[str, Any] = {"global": price, "us": price}
    if "eu" in regions:
        pricing["eu"] = price
        pricing["regional_increase_percent"] = 10.0
    params = (
        SUPPORTED_PARAMETERS
        if info.structured_outputs
        else [p for p in SUPPORTED_PARAMETERS if p != "response_format"]
    )
    return {
        "id": info.id,
        "name": info.name,
        "description": f"{info.name} by {provider_name}, served through the LLM Gateway.",
        "default_parameters": {"temperature": 1.0, "top_p": 1.0, "frequency_penalty": 0},
        "supported_parameters": list(params),
        "top_provider": {
            "is_moderated": info.is_openai,
            "context_length": info.context_length,
            "max_completion_tokens": info.max_completion_tokens,
        },
        "context_length": info.context_length,
        "pricing": pricing,
        "creator": info.creator,
        "retirement_date": info.retirement_date,
        "available_regions": list(regions),
        "providers": [provider],
        "default_provider": provider,
    }


def models_payload() -> dict[str, Any]:
    """The whole ``GET /v1/models`` body: ``{"data": [entry, ...]}``."""
    return {"data": [model_entry(m) for m in MODELS.values()]}
