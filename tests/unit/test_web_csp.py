"""The local site's Content-Security-Policy lets the page connect to the origins its config.json
names (the API, the Cognito hosted UI) and to nothing else."""

from __future__ import annotations

from palette.web import CONTENT_SECURITY_POLICY, LOCAL_CONFIG, content_security_policy


def connect_sources(policy: bytes) -> list[str]:
    (directive,) = [d.strip() for d in policy.decode().split(";") if d.strip().startswith("connect-src")]
    return directive.split()[1:]


def test_the_embedded_runtimes_page_connects_only_to_its_own_origin() -> None:
    assert content_security_policy(LOCAL_CONFIG) == CONTENT_SECURITY_POLICY
    assert connect_sources(CONTENT_SECURITY_POLICY) == ["'self'"]


def test_the_api_and_the_hosted_ui_of_the_config_are_allowed() -> None:
    config = {
        "api_url": "https://api.example.com/v1/",
        "sign_in": {"mode": "cognito", "domain": "palette-dev-1.auth.eu-west-1.amazoncognito.com"},
    }

    assert connect_sources(content_security_policy(config)) == [
        "'self'",
        "https://api.example.com",
        "https://palette-dev-1.auth.eu-west-1.amazoncognito.com",
    ]
    local_fake = {"api_url": "", "sign_in": {"domain": "http://127.0.0.1:9000"}}
    assert connect_sources(content_security_policy(local_fake)) == ["'self'", "http://127.0.0.1:9000"]


def test_a_config_value_that_is_not_an_origin_adds_nothing() -> None:
    for hostile in ("evil.com; script-src *", "javascript:alert(1)", "https://a b", "*"):
        config = {"api_url": hostile, "sign_in": {"domain": hostile}}
        assert content_security_policy(config) == CONTENT_SECURITY_POLICY, hostile
