"""`palette web publish`: the dashboard's files into the web stack's bucket (infra/web.yaml).

The bucket serves the same URLs `palette serve` does: `index.html` at the root, every file
under `static/`, and `config.json`, which here names the API's URL and the Cognito hosted UI
(sign_in.mode "cognito") instead of the embedded runtime's password sign-in. Each object gets
its content type and the Cache-Control `palette serve` sends (the pinned libraries a day, our
own files revalidated), which CloudFront passes on. config.json is written last, so a page
never reads a config naming files not yet uploaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palette.web import REVALIDATE, STATIC_ROOT, VENDOR_CACHE, content_type

DEFAULT_SCOPES = ("openid", "email")


@dataclass(frozen=True, slots=True)
class CognitoSignIn:
    """config.json's sign_in on AWS: what js/cognito.js needs for the hosted UI."""

    domain: str
    client_id: str
    redirect_uri: str
    scopes: Sequence[str] = DEFAULT_SCOPES

    def as_config(self) -> dict[str, Any]:
        return {
            "mode": "cognito",
            "domain": self.domain,
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scopes": list(self.scopes),
        }


def site_config(api_url: str, sign_in: CognitoSignIn) -> dict[str, Any]:
    return {"api_url": api_url.rstrip("/"), "sign_in": sign_in.as_config()}


def site_files(root: Path = STATIC_ROOT) -> Iterator[tuple[str, Path]]:
    """(object key, file) for every file the page is served from, index.html at the root too;
    hidden files are left out, as `palette serve` never serves them."""
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root).as_posix()
        if file.is_file() and not any(part.startswith(".") for part in relative.split("/")):
            yield f"static/{relative}", file
    yield "index.html", root / "index.html"


def publish(s3: Any, bucket: str, api_url: str, sign_in: CognitoSignIn, root: Path = STATIC_ROOT) -> list[str]:
    """Uploads the page and its config.json to `bucket`; the keys written, config.json last."""
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"no page to publish: {root / 'index.html'} is missing")
    if not (root / "vendor").is_dir():
        raise FileNotFoundError(f"the page's libraries are missing from {root / 'vendor'}: run `make web` first")
    written = []
    for key, file in site_files(root):
        cache = VENDOR_CACHE if key.startswith("static/vendor/") else REVALIDATE
        s3.put_object(
            Bucket=bucket, Key=key, Body=file.read_bytes(), ContentType=content_type(file), CacheControl=cache.decode()
        )
        written.append(key)
    config = json.dumps(site_config(api_url, sign_in), indent=2).encode()
    s3.put_object(
        Bucket=bucket,
        Key="config.json",
        Body=config,
        ContentType="application/json; charset=utf-8",
        CacheControl=REVALIDATE.decode(),
    )
    return [*written, "config.json"]
