"""Everything answered 202 completes: requests generated from the API's own OpenAPI
document (valid ones, and schemathesis' invalid ones) go through the running stack, and
each that was accepted reaches a terminal status through the worker; nothing is a 5xx.
What storage or the ledger cannot hold is refused at the edge instead. About 40 s (~80
requests, then waiting for the last to finish).

On the shared stack (tests/e2e/conftest.py): the balances checked are every account's,
other modules' included, which must be whole and within bigint just the same; generated
requests never carry a sandbox scenario (nor any other fault control)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from paystream_cli.demo_seed import DEPOSIT_ROUTES
from paystream_core.limits import amount_pattern, max_amount
from tests.e2e.stack import CURRENCY, TERMINAL, Stack
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

SCENARIO_KEY = "sandbox_scenario"  # the sandbox's fault switch: not for random data


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack


def _valid_iban(country: str, bban: str) -> str:
    digits = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


_IBANS = st.builds(
    _valid_iban,
    st.sampled_from(["DE", "FR", "GB"]),
    st.from_regex(r"[A-Z0-9]{11,30}", fullmatch=True),
)
_ROUTED = sorted(DEPOSIT_ROUTES)


def _steer(body: dict[str, Any], data: st.DataObject) -> None:
    """Half of the valid cases go to a country with routes and an amount of its currency,
    so gateways and the ledger really run (random countries are mostly rejected for want
    of a gateway, which is terminal too but exercises less)."""
    if data.draw(st.booleans()):
        country = data.draw(st.sampled_from(_ROUTED))
        currency = CURRENCY[country]
        body["country"], body["currency"] = country, currency
        body["amount"] = data.draw(
            st.sampled_from([max_amount(currency)])
            | st.from_regex(amount_pattern(currency), fullmatch=True)
        )
    destination = body.get("destination")
    if isinstance(destination, dict) and isinstance(destination.get("iban"), str):
        destination["iban"] = data.draw(_IBANS)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop(SCENARIO_KEY, None)


def test_every_accepted_request_reaches_a_terminal_status(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.env['PAYSTREAM_API_URL']}/openapi.json")
    accepted: dict[uuid.UUID, Any] = {}
    answered: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if operation.method.upper() != "POST":
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
            @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
            def send(case: schemathesis.Case, data: st.DataObject) -> None:  # type: ignore[type-arg]
                if isinstance(case.body, dict):
                    _steer(case.body, data)
                headers = {**stack.auth, "Idempotency-Key": str(uuid.uuid4())}
                response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
                answered[response.status_code] = answered.get(response.status_code, 0) + 1
                if response.status_code == 202:
                    accepted[uuid.UUID(response.json()["transaction_id"])] = case.body

            send()
    assert answered.get(202, 0) >= 20, answered
    assert all(status < 500 for status in answered), answered

    pending = set(accepted)

    def all_terminal() -> bool:
        for txn in list(pending):
            snap = stack.snapshot(txn)
            if snap is not None and snap["status"] in TERMINAL:
                pending.discard(txn)
        return not pending

    wait_for(
        all_terminal,
        timeout=90,
        interval=0.5,
        what=f"terminal statuses (still open: {[(t, accepted[t]) for t in pending][:3]})",
    )
    # Balances are whole and within bigint, however large the accepted amounts were.
    rows = stack.query("SELECT available_minor, held_minor FROM balances")
    assert all(0 <= a < 2**63 and 0 <= h < 2**63 for a, h in rows)


def test_what_cannot_be_stored_is_refused_before_anything_moves(stack: Stack) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    base = {"account_id": account, "country": "DE", "currency": "EUR", "amount": "10.00"}
    refused = [
        {**base, "metadata": {"note": "a\u0000b"}},
        {**base, "payment_method": "pm_card_visa\u0000"},
        {**base, "amount": "92233720368547758.07"},
        {**base, "amount": "10000000000.01"},
    ]
    for body in refused:
        response = stack.client.post(
            "/v1/deposits", json=body, headers={**stack.auth, "Idempotency-Key": str(uuid.uuid4())}
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
    response = stack.client.get("/v1/accounts/%00/balances", headers=stack.auth)
    assert response.status_code == 404, response.text
    # The ceiling itself is charged and credited exactly.
    txn = stack.deposit("DE", account=account, amount=max_amount("EUR"))
    assert stack.wait_status(txn, TERMINAL)["status"] == "succeeded"
    balances = stack.client.get(f"/v1/accounts/{account}/balances", headers=stack.auth).json()
    assert balances["balances"][0]["available"] == max_amount("EUR")
