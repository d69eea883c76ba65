"""Short model names, as the Plot Palette documents write them, and the model each one means.

Palette names a model `provider/model-id` (`contracts.identifiers`). The documents write
short names such as `llama-3.1-8b`; a template step's `model` and a job's `models` accept
them, and what is stored (and shown, priced, called) is the canonical id. Each alias names
a Bedrock model the shipped pricing catalog prices, so a budget covers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

MODEL_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "llama-3.1-8b": "bedrock/meta.llama3-1-8b-instruct-v1:0",
        "llama-3.1-70b": "bedrock/meta.llama3-1-70b-instruct-v1:0",
        "claude-3-haiku": "bedrock/anthropic.claude-3-haiku-20240307-v1:0",
        "claude-3.5-haiku": "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0",
        "claude-3.5-sonnet": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        "claude-3.7-sonnet": "bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0",
        "nova-micro": "bedrock/amazon.nova-micro-v1:0",
        "nova-lite": "bedrock/amazon.nova-lite-v1:0",
        "nova-pro": "bedrock/amazon.nova-pro-v1:0",
        "mistral-7b": "bedrock/mistral.mistral-7b-instruct-v0:2",
        "mixtral-8x7b": "bedrock/mistral.mixtral-8x7b-instruct-v0:1",
    }
)


def canonical_model(name: str) -> str:
    """The `provider/model-id` an alias stands for; any other name unchanged (to be checked
    as `provider/model-id` by `contracts.identifiers.model_problem`)."""
    return MODEL_ALIASES.get(name, name)
