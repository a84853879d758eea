"""Numbers a client writes in a path, a query or a form, as an adversary writes them: never a 500.

`str.isdigit` accepts '²' and other digits that `int` refuses, and `int` refuses more than 4,300
digits: each place that reads a number (`whole_number`) answers SPEC's 400 or 404, or ignores it.
"""

from __future__ import annotations

import aiohttp
import pytest

from clexproxy.handlers.common import whole_number

from .conftest import GatewayFactory, RunningGateway
from .test_console_keys import sign_in_as

HUGE = "9" * 5000
ODD = ["²", "٣", HUGE, "-1", "1e3", " 7", "0x10", ""]


def test_whole_number_reads_ascii_digits_in_range_only() -> None:
    assert whole_number("42", 1, 90) == 42
    assert whole_number("090", 1, 90) == 90
    for raw in [*ODD, "91", "0", None]:
        assert whole_number(raw, 1, 90) is None, raw


@pytest.mark.parametrize("raw", ODD)
async def test_a_daily_cap_written_oddly_is_the_fields_error(gw: RunningGateway, raw: str) -> None:
    owner = await sign_in_as(gw, "owner")
    before = len(await gw.gateway.store.list_keys("acme"))
    status, html, _ = await owner.post("/console/keys", [("name", "odd"), ("daily_cap", raw)])
    if raw in ("", " 7"):  # the form trims; an empty cap is no cap
        assert status == 200
        return
    assert status == 400
    assert "credits per day" in html
    assert len(await gw.gateway.store.list_keys("acme")) == before


async def test_key_ids_in_paths_and_queries(gw: RunningGateway) -> None:
    owner = await sign_in_as(gw, "owner")
    for raw in ("٣", HUGE):
        status, body, _ = await owner.get(f"/console/keys/{raw}/revoke")
        assert status == 404, raw
        assert '"not_found"' in body
        status, _, _ = await owner.post(f"/console/keys/{raw}/revoke")
        assert status == 404, raw
    status, html, _ = await owner.get(f"/console/keys?revoked={HUGE}")
    assert status == 200 and "revoked." not in html


@pytest.mark.parametrize("raw", ["²", "٣", HUGE])
async def test_days_written_oddly_are_a_400(gw: RunningGateway, key: str, raw: str) -> None:
    owner = await sign_in_as(gw, "owner")
    status, body, _ = await owner.get(f"/console/usage.csv?days={raw}")
    assert status == 400 and '"days"' in body
    async with aiohttp.ClientSession() as session, session.get(
        gw.base_url + "/api/usage", params={"days": raw}, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "days"


async def test_an_admin_key_id_too_long_is_a_400(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(admin_token="t" * 32)
    async with aiohttp.ClientSession() as session:
        for raw in (HUGE, "٣"):
            async with session.delete(gw.base_url + f"/admin/keys/{raw}",
                                      headers={"Authorization": "Bearer " + "t" * 32}) as resp:
                assert resp.status in (400, 404), raw
                assert (await resp.json())["error"]["status"] == resp.status
