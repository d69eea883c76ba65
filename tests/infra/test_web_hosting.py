"""The dashboard on AWS, on moto: the shared stack's web app client as Cognito keeps it (code
flow with PKCE to the given callback, no secret), the APIs taking its tokens, and `palette web
publish` putting every file in the bucket with its content type, then config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws
from typer.testing import CliRunner

from palette.cli import app
from palette.web import STATIC_ROOT, content_type
from palette.web.publish import CognitoSignIn, publish
from tests.infra.sam_templates import load

CALLBACKS = ["https://d111111abcdef8.cloudfront.net/", "http://localhost:8000/"]
SERVICE_STACKS = ("templates", "seeds", "jobs", "billing", "notifications")


def resolved(value: Any, refs: dict[str, Any]) -> Any:
    """The template's `Ref`s and `Fn::Sub`s of `value` resolved from `refs` (what these resources use)."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return refs[value["Ref"]]
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        text = value["Fn::Sub"]
        for name, replacement in refs.items():
            text = text.replace("${" + name + "}", str(replacement))
        return text
    if isinstance(value, dict):
        return {key: resolved(item, refs) for key, item in value.items()}
    if isinstance(value, list):
        return [resolved(item, refs) for item in value]
    return value


def test_the_web_client_allows_the_code_flow_with_pkce_to_the_given_callback_and_no_secret() -> None:
    resources = load("shared")["Resources"]
    with mock_aws():
        cognito = boto3.client("cognito-idp", region_name="us-east-1")
        pool = cognito.create_user_pool(PoolName="palette-dev-users")["UserPool"]["Id"]
        refs = {"Env": "dev", "UserPool": pool, "WebCallbackUrls": CALLBACKS, "AWS::AccountId": "123456789012"}
        domain = resolved(resources["HostedUiDomain"]["Properties"]["Domain"]["Fn::If"][1], refs)
        cognito.create_user_pool_domain(Domain=domain, UserPoolId=pool)
        client_id = cognito.create_user_pool_client(**resolved(resources["WebClient"]["Properties"], refs))[
            "UserPoolClient"
        ]["ClientId"]

        client = cognito.describe_user_pool_client(UserPoolId=pool, ClientId=client_id)["UserPoolClient"]
        hosted_ui = cognito.describe_user_pool_domain(Domain=domain)["DomainDescription"]

    assert client["ClientName"] == "palette-dev-web"
    assert client["AllowedOAuthFlowsUserPoolClient"] is True
    assert client["AllowedOAuthFlows"] == ["code"]
    assert sorted(client["AllowedOAuthScopes"]) == ["email", "openid"]
    assert client["CallbackURLs"] == CALLBACKS and client["LogoutURLs"] == CALLBACKS
    assert "ClientSecret" not in client  # a public client: the page holds no secret, PKCE proves it
    assert hosted_ui["UserPoolId"] == pool and domain == "palette-dev-123456789012"


def test_every_api_takes_the_web_clients_tokens() -> None:
    web_client = {"Fn::ImportValue": {"Fn::Sub": "palette-${Env}-WebClientId"}}
    exports = {output["Export"]["Name"]["Fn::Sub"] for output in load("shared")["Outputs"].values()}
    assert "palette-${Env}-WebClientId" in exports
    for stack in SERVICE_STACKS:
        (api,) = [r for r in load(stack)["Resources"].values() if r["Type"] == "AWS::Serverless::HttpApi"]
        audience = api["Properties"]["Auth"]["Authorizers"]["Cognito"]["JwtConfiguration"]["audience"]
        assert web_client in audience, stack


def uploaded(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key) for key in keys}


def test_publish_uploads_every_file_with_its_content_type_then_config_json(tmp_path: Path) -> None:
    files = {
        "index.html": "<!doctype html>",
        "app.css": "body{}",
        "js/main.js": "export {}",
        "js/pages/jobs.js": "export {}",
        "vendor/chart.umd.js": "var Chart",
        "vendor/pico.min.css": ":root{}",
        ".editor-backup": "not served",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    sign_in = CognitoSignIn("palette-dev-1.auth.us-east-1.amazoncognito.com", "client123", CALLBACKS[0])

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="site")
        written = publish(s3, "site", "https://api.example.com/", sign_in, root=tmp_path)
        objects = uploaded(s3, "site")

    assert written[-1] == "config.json"
    assert set(objects) == {
        "index.html",
        "static/index.html",
        "static/app.css",
        "static/js/main.js",
        "static/js/pages/jobs.js",
        "static/vendor/chart.umd.js",
        "static/vendor/pico.min.css",
        "config.json",
    }
    assert objects["index.html"]["ContentType"] == "text/html; charset=utf-8"
    assert objects["static/app.css"]["ContentType"] == "text/css; charset=utf-8"
    assert objects["static/js/main.js"]["ContentType"] == "text/javascript; charset=utf-8"
    assert objects["static/vendor/chart.umd.js"]["CacheControl"] == "public, max-age=86400"
    assert objects["static/js/main.js"]["CacheControl"] == "no-cache"
    assert objects["index.html"]["Body"].read() == b"<!doctype html>"
    assert objects["config.json"]["ContentType"] == "application/json; charset=utf-8"
    assert json.loads(objects["config.json"]["Body"].read()) == {
        "api_url": "https://api.example.com",
        "sign_in": {
            "mode": "cognito",
            "domain": "palette-dev-1.auth.us-east-1.amazoncognito.com",
            "client_id": "client123",
            "redirect_uri": CALLBACKS[0],
            "scopes": ["openid", "email"],
        },
    }


def test_palette_web_publish_uploads_the_real_page() -> None:
    arguments = ["web", "publish", "--bucket", "site", "--api-url", "https://api.example.com"]
    arguments += ["--cognito-domain", "auth.example.com", "--client-id", "c1", "--redirect-uri", CALLBACKS[0]]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="site")
        result = CliRunner().invoke(app, arguments)
        objects = uploaded(s3, "site")

    assert result.exit_code == 0, result.output
    served = [path for path in STATIC_ROOT.rglob("*") if path.is_file() and not path.name.startswith(".")]
    assert served and (STATIC_ROOT / "vendor" / "lit-html.js") in served
    for path in served:
        key = f"static/{path.relative_to(STATIC_ROOT).as_posix()}"
        assert objects[key]["ContentType"] == content_type(path), key
    assert json.loads(objects["config.json"]["Body"].read())["sign_in"]["client_id"] == "c1"
