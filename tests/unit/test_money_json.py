"""Money as a JSON number: rounded to 6 decimals and written in fixed-point by the facade.

Python's `json` writes 1e-06 for a millionth of a dollar; a client parsing the documents'
numbers (`budget_limit`, `cost_estimate`, dashboard costs) must never see an exponent.
"""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel

from contracts.money import MoneyNumber, dumps_fixed_point, money_number
from palette.api.app import build_app
from palette.api.auth import LocalTokens
from tests.fakes.lambda_events import fake_context

SECRET = b"money-json-secret-0123456789abcdef"


class Price(BaseModel):
    cost: MoneyNumber
    budget_limit: MoneyNumber
    tokens: float


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (money_number(Decimal("6E-7")), "0.000001"),
        (money_number(Decimal("0.0000004")), "0.0"),
        (2e-05, "0.00002"),
        (-3e-07, "-0.0000003"),
        (1e16, "10000000000000000"),
        (12.5, "12.5"),
    ],
)
def test_floats_are_written_in_fixed_point(value: float, text: str) -> None:
    assert dumps_fixed_point({"x": value, "note": "1e-06 in a string stays"}, separators=(",", ":")) == (
        f'{{"x":{text},"note":"1e-06 in a string stays"}}'
    )
    assert json.loads(text) == pytest.approx(value)


def test_the_facade_answers_money_numbers_without_an_exponent() -> None:
    router = Router()

    @router.get("/price")
    def price() -> Price:
        return Price(cost=Decimal("0.0000006"), budget_limit=Decimal("50"), tokens=3e-05)

    app = build_app([router], LocalTokens(SECRET), local=False)
    reply = app.resolve(_event("/price", LocalTokens(SECRET).issue("alice")), fake_context())

    assert reply["statusCode"] == 200, reply
    assert reply["body"] == '{"cost":0.000001,"budget_limit":50.0,"tokens":0.00003}'


def _event(path: str, token: str) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"authorization": f"Bearer {token}"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "domainPrefix": "api",
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Nov/2026:12:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
            "http": {
                "method": "GET",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "pytest",
            },
        },
        "isBase64Encoded": False,
    }
