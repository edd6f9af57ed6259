"""Schemathesis against the service's own OpenAPI description: no input is a 5xx.

Every operation of ``/api/openapi.json`` is called with generated parameters and bodies
(positive and negative; bounded: ``MAX_EXAMPLES`` per operation, no shrinking, a fixed
seed): with the hometier admin's token (ops), with alice's, and with ops on a real home
(bob's, his newest snapshot, his lease) so that generated queries and bodies get past
the lookups. The only check is ``not_a_server_error``: a 4xx for
nonsense is right, a 5xx is a bug. A failure names the operation and the request; the
service's traceback is in ``service.log`` (appended to the failure).

Needs ``schemathesis`` (4.x); skipped without it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

from e2e.svc_fixtures import (
    Api,
    api_fixture,  # noqa: F401 - the `api` fixture
)

schemathesis = pytest.importorskip("schemathesis", minversion="4.0")
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = [pytest.mark.hub, pytest.mark.slow]

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def api_schema(api: Api) -> Any:
    return schemathesis.openapi.from_url(f"{api.svc.url}/api/openapi.json", timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema")


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def call(api: Api, case: Any, caller: str, pin: dict[str, str] | None = None) -> None:
    """Send ``case`` with ``caller``'s token (path parameters in ``pin`` fixed), check it
    is no 5xx; on failure, print what the service logged meanwhile."""
    for name, value in (pin or {}).items():
        if name in case.path_parameters:
            case.path_parameters[name] = value
    log = api.svc.root / "service.log"
    before = log.stat().st_size
    try:
        case.call_and_validate(
            headers={"Authorization": f"token {api.tokens[caller]}"},
            checks=[not_a_server_error],
            timeout=30,
        )
    except Exception:
        with log.open("rb") as f:
            f.seek(before)
            print(f"service.log for this request:\n{f.read().decode(errors='replace')[-6000:]}")
        raise


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_input_is_a_server_error_for_the_admin(case: Any, api: Api) -> None:
    call(api, case, "ops")


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_input_is_a_server_error_for_a_user(case: Any, api: Api) -> None:
    call(api, case, "alice")


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_input_is_a_server_error_on_a_real_home(case: Any, api: Api) -> None:
    """The same with bob's home, his newest snapshot and his lease: the generated
    paths, formats, filters and bodies reach the code behind the lookups."""
    pin = {"user": "bob", "snapshot": "latest", "lease": api.fixture_leases["bob"]}
    call(api, case, "ops", pin)
