"""CORS on AWS: each service's HTTP API answers browser preflights itself (before the JWT
authorizer) for the origins of its `CorsAllowOrigins` parameter, with the same headers the
local facade allows and exposes; an empty parameter configures no CORS."""

from __future__ import annotations

from typing import Any

import pytest

from palette.api.app import CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS
from tests.infra.sam_templates import load, resources

API_STACKS = ("templates", "seeds", "jobs", "billing")


@pytest.mark.parametrize("name", API_STACKS)
def test_the_http_api_configures_cors_from_its_parameter(name: str) -> None:
    template = load(name)
    parameter = template["Parameters"]["CorsAllowOrigins"]
    assert parameter["Type"] == "CommaDelimitedList" and parameter["Default"] == ""
    assert template["Conditions"]["CorsEnabled"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": [",", {"Ref": "CorsAllowOrigins"}]}, ""]}]
    }
    (api,) = resources(template, "AWS::Serverless::HttpApi").values()
    condition, enabled, disabled = api["Properties"]["CorsConfiguration"]["Fn::If"]
    assert condition == "CorsEnabled" and disabled == {"Ref": "AWS::NoValue"}
    cors: dict[str, Any] = enabled
    assert cors["AllowOrigins"] == {"Ref": "CorsAllowOrigins"}
    assert cors["AllowHeaders"] == CORS_ALLOW_HEADERS
    assert cors["ExposeHeaders"] == CORS_EXPOSE_HEADERS
    assert "OPTIONS" in cors["AllowMethods"]
