"""The `local` provider: the GGUF models of `palette.models.local_models`, run in-process by
llama.cpp (the `local` extra).

Each model loads lazily on its first use and stays loaded. llama.cpp is not re-entrant, so
generation runs on one dedicated thread: calls queue there, the event loop never blocks on a
forward pass, and a cancelled call that has not started yet never runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from palette.models.local_models import INSTALL_HINT, LOCAL_MODELS, LocalModel
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


class _Loaded(NamedTuple):
    llama: Any
    formatter: Any
    """The ChatFormatter the model's chat handler wraps prompts with."""


def _user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


class LocalLlamaGateway(ProviderGateway):
    """The local GGUF models on llama.cpp; serves `local/<model id>` of each of `models`.

    One llama.cpp thread by default, for prompt and generation alike: its threads meet at a
    barrier on every layer, so on a busy machine (the workers, the facade, CI's two pytest
    workers on two cores) a descheduled thread stalls the others. Measured at a load average
    of 9 on two cores, SmolLM2 read 85 prompt tokens and wrote 32 in 2.9-5.8 s on one thread
    and 21 s on two.

    `seed` is the default sampling seed; a request's own seed wins. Token counts are exact:
    usage comes from llama.cpp and `count_input_tokens` tokenizes the prompt as the model's
    chat formatter wraps it, the same formatter its generation uses.
    """

    provider = "local"

    def __init__(
        self,
        models: Mapping[str, LocalModel] = LOCAL_MODELS,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        seed: int = 0,
    ) -> None:
        self._models = models
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._seed = seed
        self._loaded: dict[str, _Loaded] = {}
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    def _entry(self, model: str) -> LocalModel:
        entry = self._models.get(self.model_id(model))
        if entry is None:
            served = ", ".join(sorted(entry.name for entry in self._models.values()))
            raise UnknownModel(f"local model {model!r} is unknown; the local provider serves {served}", model=model)
        return entry

    def _load(self, entry: LocalModel) -> _Loaded:
        loaded = self._loaded.get(entry.model_id)
        if loaded is not None:
            return loaded
        with self._load_lock:
            if entry.model_id not in self._loaded:
                try:
                    import llama_cpp
                    from llama_cpp.llama_chat_format import chat_formatter_to_chat_completion_handler
                except ImportError as exc:
                    raise ModelNotInstalled(INSTALL_HINT, model=entry.name) from exc
                llama = llama_cpp.Llama(
                    model_path=str(entry.find_file()),
                    n_ctx=self._n_ctx,
                    n_threads=self._n_threads,
                    n_threads_batch=self._n_threads,
                    seed=self._seed,
                    verbose=False,
                )
                formatter = entry.chat_formatter(llama)
                llama.chat_handler = chat_formatter_to_chat_completion_handler(formatter)
                self._loaded[entry.model_id] = _Loaded(llama, formatter)
        return self._loaded[entry.model_id]

    def _complete(self, entry: LocalModel, request: ModelRequest) -> dict[str, Any]:
        llama = self._load(entry).llama
        kwargs: dict[str, Any] = {
            "messages": _user_turn(request.prompt),
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
        entry = self._entry(model)
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._complete, entry, request)
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
        llama, formatter = self._load(self._entry(model))
        formatted = formatter(messages=_user_turn(prompt))
        encoded = formatted.prompt.encode("utf-8")
        return len(llama.tokenize(encoded, add_bos=not formatted.added_special, special=True))

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()
