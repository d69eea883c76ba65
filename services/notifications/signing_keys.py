"""Where each webhook's signing secret is kept: the blob store, not the log.

The secret is the one thing delivery needs to sign and it must never be disclosed again
after creation, so it stays out of the event log (which is exported, replayed and
audited) and out of every read model. On AWS it is an S3 object in the service's bucket
(encrypted at rest); locally a file in the data directory's blob folder.
"""

from __future__ import annotations

import secrets

from palette.blobs.port import BlobNotFound, BlobStore

SECRET_PREFIX = "whsec_"


def generated_secret() -> str:
    """A new secret: 32 random bytes, URL-safe, with a recognisable prefix."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class SigningKeys:
    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs

    @staticmethod
    def _key(webhook_id: str) -> str:
        return f"webhook-secrets/{webhook_id}"

    def save(self, webhook_id: str, secret: str) -> None:
        self._blobs.put_bytes(self._key(webhook_id), secret.encode(), "text/plain")

    def save_first(self, webhook_id: str, secret: str) -> None:
        """Saves `secret` unless the webhook has one already: of duplicates racing to
        register one webhook, the first secret stays and every one answers it."""
        self._blobs.put_bytes_if_absent(self._key(webhook_id), secret.encode(), "text/plain")

    def load(self, webhook_id: str) -> str | None:
        """The secret, or None once the webhook is deleted."""
        try:
            return self._blobs.get_bytes(self._key(webhook_id)).decode()
        except BlobNotFound:
            return None

    def delete(self, webhook_id: str) -> None:
        self._blobs.delete(self._key(webhook_id))
