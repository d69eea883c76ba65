"""GET /cache and DELETE /cache: the caller's call cache (#21), for its size and to clear it.

The generator keeps a job's cached model answers (jobs with `"cache": true`) as blobs under
the owner's `call_cache_prefix`; the jobs service, which owns the user's jobs and their
data, counts and clears them through the same BlobStore port on both runtimes, so the two
services share the layout (`palette.blobs.call_cache`), never code. Only the caller's own
prefix is ever read or deleted. A job running while its owner clears the cache may still
add the answers it makes afterwards.
"""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel, Field

from palette.api.app import caller, logger
from palette.api.errors import openapi_responses
from palette.blobs.call_cache import call_cache_size, clear_call_cache
from palette.blobs.port import BlobStore

_ERRORS = {
    400: "VALIDATION_ERROR: the request is malformed",
    401: "UNAUTHORIZED: no valid bearer token",
}


class CacheBody(BaseModel):
    entries: int = Field(ge=0, description="cached model answers")
    bytes: int = Field(ge=0, description="their size in the blob store")


class ClearedCacheBody(BaseModel):
    deleted: int = Field(ge=0, description="cached model answers removed")


def create_cache_router(blobs: BlobStore) -> Router:
    """The /cache routes over the blob store that holds the users' call caches."""
    router = Router()

    @router.get(
        "/cache",
        tags=["cache"],
        summary="The caller's call cache: how many answers it holds and their bytes",
        responses=openapi_responses(200, _ERRORS),
    )
    def get_call_cache() -> CacheBody:
        entries, size = call_cache_size(blobs, caller(router))
        return CacheBody(entries=entries, bytes=size)

    @router.delete(
        "/cache",
        tags=["cache"],
        summary="Clear the caller's call cache: later jobs with the cache on call the models again",
        responses=openapi_responses(200, _ERRORS),
    )
    def delete_call_cache() -> ClearedCacheBody:
        deleted = clear_call_cache(blobs, caller(router))
        logger.info("call cache cleared", extra={"deleted": deleted})
        return ClearedCacheBody(deleted=deleted)

    return router
