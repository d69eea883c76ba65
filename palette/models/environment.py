"""The model gateway of a process, configured from its environment.

`openai/...` from OPENAI_BASE_URL / OPENAI_API_KEY, `bedrock/...` from the standard AWS
settings (when boto3 is installed), `local/...` from the `local` extra (loaded on first use).
"""

from __future__ import annotations

from palette.models.port import ModelGateway, MultiProviderGateway, ProviderGateway


def gateway_from_env(max_connections: int = 64) -> ModelGateway:
    """Every provider this installation has, each configured from the environment."""
    from palette.models.local import LocalLlamaGateway
    from palette.models.openai import OpenAICompatibleGateway

    gateways: list[ProviderGateway] = [
        OpenAICompatibleGateway(max_connections=max_connections),
        LocalLlamaGateway(),
    ]
    try:
        from palette.models.bedrock import BedrockGateway
    except ImportError:
        pass
    else:
        gateways.append(BedrockGateway())
    return MultiProviderGateway({gateway.provider: gateway for gateway in gateways})
