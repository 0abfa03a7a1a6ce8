"""The web board in a real browser (Debian's Chromium, driven by Playwright): sign in, see the deal in its column,
submit a form with an error and see the field's message, click Done and watch the card move, be refused without
sign-in and on a forged CSRF token. `SOPFLOW_SCREENSHOTS=DIR` also saves the README's screenshots there
(`make screenshots`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.starter.conftest import BOARD_TOKEN, Board, served_board, until_stage


async def sign_in(page: Any, url: str, token: str = BOARD_TOKEN) -> None:
    await page.goto(f"{url}/board")
    assert "/login" in page.url
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{url}/board*")


def column(page: Any, stage: str) -> Any:
    return page.locator(f'section[data-stage="{stage}"]')


async def test_the_board_refuses_a_browser_without_sign_in_and_a_wrong_token(board: Board, browser: Any) -> None:
    async with served_board(board) as web:
        page = await browser.new_page()
        await page.goto(f"{web.url}/deals/WB-B0")
        assert "/login?next=" in page.url
        await page.get_by_label("Access token").fill("sft_not-a-token")
        await page.get_by_role("button", name="Sign in").click()
        assert "not valid" in await page.get_by_role("alert").inner_text()


async def test_a_form_with_an_error_shows_the_field_message_and_the_corrected_one_moves_the_card(
    board: Board, browser: Any
) -> None:
    handle = await board.deal("WB-B1")
    async with served_board(board) as web:
        page = await browser.new_page()
        await sign_in(page, web.url)
        await page.goto(f"{web.url}/board?playbook=safe_balance")
        card = column(page, "contract_request").locator('[data-deal="WB-B1"]')
        assert await card.count() == 1
        await card.get_by_role("link", name="WB-B1").click()
        await page.get_by_role("link", name="Contract request").click()
        await page.get_by_label("agreement").select_option("Safe Balance")
        await page.get_by_label("Term (months)").fill("12")
        await page.get_by_label("Monthly fee").fill("a lot")
        await page.get_by_label("Client agreed to move forward on").fill("2026-11-30")
        await page.get_by_role("button", name="Submit").click()
        message = page.locator("#field-monthly_fee-error")
        assert await message.count() == 1 and await message.inner_text()
        await page.get_by_label("Monthly fee").fill("1,250.00")
        await page.get_by_role("button", name="Submit").click()
        assert "Contract request received." in await page.get_by_role("status").inner_text()
        await until_stage(handle, "contract")
        await board.recorded("WB-B1", "contract")
        await page.goto(f"{web.url}/board?playbook=safe_balance")
        assert await column(page, "contract").locator('[data-deal="WB-B1"]').count() == 1
        assert await column(page, "contract_request").locator('[data-deal="WB-B1"]').count() == 0


async def test_done_on_the_last_task_meets_the_gate_and_the_card_moves_to_the_next_stage(
    board: Board, browser: Any
) -> None:
    handle = await board.deal("WB-B2", stage="prelaunch")
    if os.environ.get("SOPFLOW_SCREENSHOTS"):  # a fuller board for the README
        await board.deal("WB-B2-second")
    async with served_board(board) as web:
        page = await browser.new_page(viewport={"width": 1600, "height": 720})
        await sign_in(page, web.url)
        await page.goto(f"{web.url}/board?playbook=safe_balance")
        assert await column(page, "prelaunch").locator('[data-deal="WB-B2"]').count() == 1
        await shoot(page, "board.png")
        await page.goto(f"{web.url}/deals/WB-B2")
        await shoot(page, "deal.png")
        await page.locator('tr[data-task="cleared_for_launch"]').get_by_role("button", name="Done").click()
        assert "is done" in await page.get_by_role("status").inner_text()
        await page.get_by_role("button", name="Move to Launch day(s)").click()
        await until_stage(handle, "launch")
        await board.recorded("WB-B2", "launch")
        await page.goto(f"{web.url}/board?playbook=safe_balance")
        assert await column(page, "launch").locator('[data-deal="WB-B2"]').count() == 1
        assert await column(page, "prelaunch").locator('[data-deal="WB-B2"]').count() == 0


async def test_a_forged_csrf_token_is_refused_on_the_page_and_the_task_stays_open(board: Board, browser: Any) -> None:
    handle = await board.deal("WB-B3", stage="prelaunch")
    async with served_board(board) as web:
        page = await browser.new_page()
        await sign_in(page, web.url)
        await page.goto(f"{web.url}/deals/WB-B3")
        row = page.locator('tr[data-task="cleared_for_launch"]')
        await row.locator('input[name="_csrf"]').evaluate("input => { input.value = 'forged' }")
        await row.get_by_role("button", name="Done").click()
        assert "refused" in await page.get_by_role("heading").first.inner_text()
        status = await handle.query("status")
        assert "cleared_for_launch" not in status["done_tasks"]


async def shoot(page: Any, name: str) -> None:
    """Save a screenshot for the README when SOPFLOW_SCREENSHOTS names a folder."""
    folder = os.environ.get("SOPFLOW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / name), full_page=True)
