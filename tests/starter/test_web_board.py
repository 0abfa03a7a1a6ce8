"""The web board over HTTP: sign-in (tokens, the SSO proxy, the dev user), CSRF, limits, and actions applied once.

The app is the intake's, with the session's dev server and a real worker; requests go to it in process, from the
client address each test names (so the proxy rules are tested without a proxy). The browser tests are in
test_web_browser.py.
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from sqlalchemy import select

from sopflow.config import Settings
from sopflow.db import JournalRow
from sopflow.mailsink import free_port
from sopflow.models import LifecycleStatus
from sopflow.staff import load_staff, save_staff
from starter.web.auth import SESSION_COOKIE
from starter.webhooks import create_app
from tests.starter.conftest import (
    BOARD_TOKEN,
    LIMITED_TOKEN,
    PROXY,
    Board,
    csrf_of,
    eventually,
    signed_in,
    submission_of,
    until_stage,
)
from workflows.lifecycle import ClientLifecycle


async def test_nothing_on_the_board_is_public(board: Board) -> None:
    async with board.http() as http:
        for path in ("/board", "/work", "/charts", "/deals/WB-1"):
            answer = await http.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
        api = await http.get("/board", headers={"Accept": "application/json"})
        assert api.status_code == 401 and api.json() == {"error": "sign in first"}
        assert (await http.post("/deals/WB-1/tasks/x/done", data={})).status_code == 401


async def test_a_wrong_access_token_is_refused_on_the_login_page(board: Board) -> None:
    async with board.http() as http:
        page = await http.get("/login")
        answer = await http.post("/login", data={"_csrf": csrf_of(page.text), "token": "sft_guess", "next": "/board"})
        assert answer.status_code == 401 and "not valid" in answer.text
        assert SESSION_COOKIE not in answer.cookies


async def test_the_session_cookie_is_signed_http_only_and_same_site(board: Board) -> None:
    async with board.http() as http:
        page = await http.get("/login")
        answer = await http.post("/login", data={"_csrf": csrf_of(page.text), "token": BOARD_TOKEN, "next": "/work"})
        assert answer.status_code == 303 and answer.headers["location"] == "/work"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and BOARD_TOKEN.lower() not in cookie
        assert (await http.get("/board")).status_code == 200


async def test_the_login_page_never_sends_a_person_to_another_site(board: Board) -> None:
    async with board.http() as http:
        page = await http.get("/login")
        data = {"_csrf": csrf_of(page.text), "token": BOARD_TOKEN, "next": "//evil.example.com/x"}
        answer = await http.post("/login", data=data)
        assert answer.headers["location"] == "/board"


async def test_a_login_post_without_the_pages_token_is_refused(board: Board) -> None:
    async with board.http() as http:
        answer = await http.post("/login", data={"token": BOARD_TOKEN, "_csrf": "forged"})
        assert answer.status_code == 403 and SESSION_COOKIE not in answer.cookies


async def test_a_revoked_token_ends_its_session_at_once(board: Board) -> None:
    async with board.http() as http:
        await signed_in(http)
        path = board.settings.staff_path()
        staff = load_staff(path)
        staff.people[0].tokens = []
        save_staff(path, staff)
        assert (await http.get("/board")).status_code == 303


async def test_the_proxy_header_signs_in_only_from_a_trusted_proxy(board: Board) -> None:
    header = {"X-Forwarded-Email": "cs@example.com"}
    async with board.http(client_host=PROXY) as http:
        answer = await http.get("/board", headers=header)
        assert answer.status_code == 200 and "Signed in as cs@example.com" in answer.text
    async with board.http(client_host="10.0.0.99") as http:
        assert (await http.get("/board", headers=header)).status_code == 303


async def test_the_dev_user_is_signed_in_without_a_token(board: Board) -> None:
    settings = board.settings.model_copy(update={"web_dev_user": "dev@example.com"})
    app = create_app(settings, board.client, board.db)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://board") as http:
        answer = await http.get("/board")
        assert answer.status_code == 200 and "Signed in as dev@example.com" in answer.text


async def test_the_board_shows_each_deal_in_its_stage_column_with_its_company_and_owner(board: Board) -> None:
    await board.deal("WB-10")
    async with board.http() as http:
        await signed_in(http)
        page = (await http.get("/board", params={"playbook": "safe_balance"})).text
        column = page[page.index('data-stage="contract_request"') :]
        column = column[: column.index("</section>")]
        assert 'data-deal="WB-10"' in column and "Care Center WB-10" in column and "rep:owner-17" in column
        filtered = (await http.get("/board", params={"playbook": "safe_balance", "owner": "someone@example.com"})).text
        assert 'data-deal="WB-10"' not in filtered


async def test_a_limited_person_sees_only_deals_of_their_role_and_unknown_deals_answer_alike(board: Board) -> None:
    await board.deal("WB-20")
    await board.deal("WB-21", account_manager_email="other-am@example.com")
    async with board.http() as http:
        await signed_in(http, LIMITED_TOKEN)
        page = (await http.get("/board", params={"playbook": "safe_balance"})).text
        assert 'data-deal="WB-20"' in page and 'data-deal="WB-21"' not in page
        for deal in ("WB-21", "WB-404", "not a deal!"):
            assert (await http.get(f"/deals/{deal}")).status_code == 404


async def test_done_posted_twice_is_applied_once_and_a_task_done_by_someone_else_is_refused(board: Board) -> None:
    handle = await board.deal("WB-30", stage="prelaunch")
    async with board.http() as http:
        await signed_in(http)
        page = (await http.get("/deals/WB-30")).text
        action = "/deals/WB-30/tasks/cleared_for_launch/done"
        data = {"_csrf": csrf_of(page), "_submission": submission_of(page, action)}
        first, again = await http.post(action, data=data), await http.post(action, data=data)
        assert first.status_code == again.status_code == 303
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        assert "cleared_for_launch" in status.done_tasks

        async def recorded_once_as_the_person() -> None:
            with board.db.session() as session:
                rows = session.scalars(select(JournalRow).where(JournalRow.workflow_id == "deal-WB-30"))
                done = [r.detail for r in rows if r.kind == "task" and r.detail.get("task") == "cleared_for_launch"]
            assert [d.get("by") for d in done if d.get("status") == "done"] == ["cs@example.com"]

        await eventually(recorded_once_as_the_person, timeout=60)
        other = await http.post(action, data={**data, "_submission": "another-page-key-123"})
        assert other.status_code == 409 and "already done" in other.text


async def test_a_post_with_a_forged_csrf_token_changes_nothing(board: Board) -> None:
    handle = await board.deal("WB-40", stage="prelaunch")
    async with board.http() as http:
        await signed_in(http)
        page = (await http.get("/deals/WB-40")).text
        action = "/deals/WB-40/tasks/cleared_for_launch/done"
        for forged in ({"_csrf": "forged-token"}, {}):
            answer = await http.post(action, data={**forged, "_submission": submission_of(page, action)})
            assert answer.status_code == 403 and "refused" in answer.text
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        assert "cleared_for_launch" not in status.done_tasks


async def test_a_form_with_a_bad_field_comes_back_with_its_message_and_posted_twice_is_applied_once(
    board: Board,
) -> None:
    handle = await board.deal("WB-50")
    async with board.http() as http:
        await signed_in(http)
        action = "/deals/WB-50/forms/contract_request"
        page = (await http.get(action)).text
        fields = {"agreement": "Safe Balance", "term_months": "12", "client_agreed_on": "2026-11-30"}
        data = {"_csrf": csrf_of(page), "_submission": submission_of(page, action), **fields}
        refused = await http.post(action, data={**data, "monthly_fee": "a lot"})
        assert refused.status_code == 422 and 'id="field-monthly_fee-error"' in refused.text
        corrected = {**data, "_submission": submission_of(refused.text, action), "monthly_fee": "1,250.00"}
        first, again = await http.post(action, data=corrected), await http.post(action, data=corrected)
        assert first.status_code == again.status_code == 303
        await until_stage(handle, "contract")
        history = await handle.fetch_history()
        accepted = [e for e in history.events if e.HasField("workflow_execution_update_accepted_event_attributes")]
        assert len([e for e in accepted if "contract_request" in str(e)]) == 1


async def test_the_deal_page_shows_the_gate_tasks_forms_timeline_emails_and_the_workflow_link(board: Board) -> None:
    await board.deal("WB-60", stage="prelaunch")
    async with board.http() as http:
        await signed_in(http)
        page = (await http.get("/deals/WB-60")).text
        assert "What blocks leaving" in page and "cleared_for_launch" in page
        assert 'data-task="cleared_for_launch"' in page
        assert "/namespaces/default/workflows/deal-WB-60" in page
        assert "Timeline" in page and "Emails" in page
        assert (await http.get("/work", params={"everyone": "true"})).status_code == 200
        assert "<svg" in (await http.get("/charts")).text


async def test_the_charts_page_forecasts_the_next_weeks_from_the_stored_states_under_both_assumptions(
    board: Board,
) -> None:
    await board.deal("WB-FORECAST")
    async with board.http() as http:
        await signed_in(http)
        page = (await http.get("/charts")).text
    assert "<h2>Forecast</h2>" in page
    assert "The next 8 weeks if nothing happens, and if everything is done on time" in page
    assert "If nothing happens (" in page and "If on time (" in page


@pytest.mark.parametrize("due", ["someday", "2026-13-01"])
async def test_an_unknown_due_filter_is_a_page_naming_the_accepted_ones(board: Board, due: str) -> None:
    async with board.http() as http:
        await signed_in(http)
        answer = await http.get("/work", params={"due": due})
        assert answer.status_code == 400 and "today, week, overdue" in answer.text


def test_settings_without_trusted_proxies_ignore_the_proxy_header() -> None:
    assert Settings().web_trusted_proxies == ""


async def test_temporal_unreachable_is_a_page_saying_to_try_again_and_a_done_post_changed_nothing(
    board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    await board.deal("WB-70", stage="prelaunch")
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    cut_off = replace(board, app=create_app(board.settings, client=None, db=board.db))
    async with cut_off.http() as http:
        await signed_in(http)
        page = await http.get("/deals/WB-70")
        assert page.status_code == 503 and "try again" in page.text
        action = "/deals/WB-70/tasks/cleared_for_launch/done"
        answer = await http.post(action, data={"_csrf": csrf_of(page.text), "_submission": "a-key-of-the-page-0"})
        assert answer.status_code == 503 and "nothing was changed" in answer.text


async def test_a_query_the_board_cannot_take_is_a_page_not_a_json_error(board: Board) -> None:
    async with board.http() as http:
        await signed_in(http)
        answer = await http.get("/board", params={"owner": "x" * 300})
        assert answer.status_code == 400 and answer.headers["content-type"].startswith("text/html")
        assert "owner" in answer.text


async def test_my_work_lists_the_persons_own_tasks_with_done_and_done_there_returns_to_the_list(board: Board) -> None:
    handle = await board.deal("WB-80", stage="prelaunch")
    await board.recorded("WB-80", "prelaunch")
    async with board.http() as http:
        await signed_in(http, LIMITED_TOKEN)  # am@example.com, the deal's account manager
        action = "/deals/WB-80/tasks/cleared_for_launch/done"

        async def listed() -> str:
            page = (await http.get("/work")).text
            assert f'action="{action}"' in page
            return page

        page = await eventually(listed, timeout=60)
        data = {"_csrf": csrf_of(page), "_submission": submission_of(page, action), "back": "work"}
        answer = await http.post(action, data=data)
        assert answer.status_code == 303 and answer.headers["location"] == "/work"
        status: LifecycleStatus = await handle.query(ClientLifecycle.status)
        assert "cleared_for_launch" in status.done_tasks


@pytest.mark.parametrize(
    "body",
    [
        "token=a&token=b&_csrf=x",
        "%ff%fe=%ff",
        "x=" + "y" * 5000,
    ],
)
async def test_a_damaged_login_post_is_a_page_never_a_server_error(board: Board, body: str) -> None:
    async with board.http() as http:
        page = await http.get("/login")
        sent = body.replace("_csrf=x", f"_csrf={csrf_of(page.text)}")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = await http.post("/login", content=sent, headers=headers)
        assert 400 <= answer.status_code < 500 and answer.headers["content-type"].startswith("text/html")
