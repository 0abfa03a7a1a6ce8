"""The web board's charts (issue 16): what each chart draws from report rows, the weekly workload it is drawn from,
and that every SVG can be inlined in a page under a strict Content-Security-Policy with its labels escaped."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from sopflow import zones
from sopflow.charts import funnel_svg, png_drawer, stacked_weeks_svg, stage_time_svg, weekly_workload, workload_svg
from sopflow.reports import PipelineRow, StageTimeRow
from sopflow.work_queue import WorkItem

SVG = "{http://www.w3.org/2000/svg}"
NEW_YORK = zones.zone("America/New_York")
START = date(2026, 12, 10)  # a Thursday: its week starts on Monday, December 7
MONDAY = datetime(2026, 12, 7, 15, tzinfo=UTC)  # 10:00 in New York
HOSTILE = 'Contract <script>alert("x")</script> & "co"'


def pipeline_row(stage: str, title: str, count: int, playbook: str = "safe_balance") -> PipelineRow:
    return PipelineRow(playbook=playbook, stage=stage, stage_title=title, count=count, median_days=2.0, max_days=5.0)


def stage_row(stage: str, median: float, p90: float) -> StageTimeRow:
    return StageTimeRow(playbook="safe_balance", stage=stage, stays=10, median_days=median, p90_days=p90)


def item(owner: str, due_at: datetime | None) -> WorkItem:
    return WorkItem(
        deal_id="D-1",
        playbook="safe_balance",
        stage="ongoing",
        kind="task",
        what="site visit",
        owner=owner,
        due_at=due_at,
        days_until_due=None,
        command="sopflow task done D-1 site_visit",
    )


def parse(svg: str) -> ET.Element:
    """Parsing is the proof of well-formedness: a label pasted into markup would break it or add elements."""
    return ET.fromstring(svg)


def classes(element: ET.Element) -> list[str]:
    return element.get("class", "").split()


def with_class(root: ET.Element, tag: str, name: str) -> list[ET.Element]:
    return [element for element in root.iter(SVG + tag) if name in classes(element)]


def bars(root: ET.Element) -> list[list[tuple[str, str]]]:
    """Per series, its bars as (x label, value), from the descriptions pygal keeps beside each bar."""
    drawn = []
    for series in with_class(root, "g", "series"):
        values = []
        for bar in with_class(series, "g", "bar"):
            desc = {d.get("class"): d.text or "" for d in bar.iter(SVG + "desc")}
            values.append((desc["x_label"], desc["value"]))
        if values:
            drawn.append(values)
    return drawn


def axis_labels(root: ET.Element, axis: str) -> list[str]:
    """The labels as written on an axis (a long one is shortened there, its full text in a <title> beside it)."""
    (group,) = (g for g in with_class(root, "g", "axis") if axis in classes(g))
    return [text.text or "" for text in group.iter(SVG + "text")]


def legend(root: ET.Element) -> list[str]:
    return [text.text or "" for g in with_class(root, "g", "legend") for text in g.iter(SVG + "text")]


FUNNEL = [
    pipeline_row("targeting", "Targeting", 7),
    pipeline_row("contract", "Contract", 3),
    pipeline_row("prelaunch", "Prelaunch", 12),
    pipeline_row("ongoing", "Ongoing management", 4),
]

ALL_CHARTS: dict[str, Callable[[], str]] = {
    "funnel": lambda: funnel_svg(FUNNEL),
    "stage time": lambda: stage_time_svg([stage_row("targeting", 1.5, 4.25)], {"targeting": "Targeting"}),
    "workload": lambda: workload_svg({"rep": [1, 2, 0], "rep:owner-17": [0, 1, 3]}, START),
    "empty funnel": lambda: funnel_svg([]),
    "empty stage time": lambda: stage_time_svg([], {}),
    "empty workload": lambda: workload_svg({}, START),
}


# --- the funnel ----------------------------------------------------------------------------------------------------


def test_the_funnel_draws_one_bar_per_stage_in_the_rows_order_labelled_by_stage_title() -> None:
    root = parse(funnel_svg(FUNNEL))

    assert bars(root) == [[("Targeting", "7"), ("Contract", "3"), ("Prelaunch", "12"), ("Ongoing management", "4")]]
    assert axis_labels(root, "x") == ["Targeting", "Contract", "Prelaunch", "Ongoing management"]
    assert root.findtext(SVG + "title") == "Open deals per stage"
    assert legend(root) == []  # one series: its name would only repeat the title


@pytest.mark.parametrize("top", [1, 3, 8, 9, 37, 250])
def test_the_count_axis_shows_whole_numbers_from_zero_past_the_largest_count(top: int) -> None:
    labels = axis_labels(parse(funnel_svg([pipeline_row("targeting", "Targeting", top)])), "y")

    ticks = [int(label) for label in labels]  # int() refuses "0.5"
    assert ticks[0] == 0
    assert ticks[-1] >= top
    assert ticks == sorted(set(ticks))
    assert len(ticks) <= 9


def test_the_funnel_refuses_rows_of_two_playbooks_rather_than_mixing_their_stages() -> None:
    rows = [pipeline_row("targeting", "Targeting", 2), pipeline_row("intake", "Intake", 1, playbook="radio")]

    with pytest.raises(ValueError, match="one playbook per chart, got radio, safe_balance"):
        funnel_svg(rows)


# --- time in stage --------------------------------------------------------------------------------------------------


def test_stage_time_groups_median_and_p90_days_per_stage_in_the_rows_order() -> None:
    rows = [stage_row("targeting", 1.5, 4.25), stage_row("contract", 0.3, 13.6)]
    root = parse(stage_time_svg(rows, {"targeting": "Targeting", "contract": "Contract"}))

    assert bars(root) == [
        [("Targeting", "1.5"), ("Contract", "0.3")],
        [("Targeting", "4.2"), ("Contract", "13.6")],
    ]
    assert legend(root) == ["Median", "90th percentile"]
    assert axis_labels(root, "y") == ["0", "2", "4", "6", "8", "10", "12", "14"]


def test_stage_time_labels_a_stage_missing_from_the_titles_by_its_id() -> None:
    root = parse(stage_time_svg([stage_row("retired_stage", 2.0, 3.0)], {}))

    assert axis_labels(root, "x") == ["retired_stage"]


# --- the weekly workload -------------------------------------------------------------------------------------------


def test_workload_counts_items_per_owner_in_weeks_from_the_monday_of_the_start_week() -> None:
    items = [
        item("rep", MONDAY),  # the Monday before START: week 0
        item("rep", MONDAY + timedelta(days=6)),  # Sunday: still week 0
        item("rep", MONDAY + timedelta(days=7)),  # the next Monday: week 1
        item("am", MONDAY + timedelta(days=20)),  # week 2
        item("rep:owner-17", MONDAY + timedelta(days=3)),
    ]

    assert weekly_workload(items, START, 3, NEW_YORK) == {
        "am": [0, 0, 1],
        "rep": [2, 1, 0],
        "rep:owner-17": [1, 0, 0],
    }


def test_workload_counts_overdue_items_in_the_first_week() -> None:
    items = [item("rep", MONDAY - timedelta(days=30)), item("rep", MONDAY - timedelta(days=1)), item("rep", MONDAY)]

    assert weekly_workload(items, START, 2, NEW_YORK) == {"rep": [3, 0]}


def test_workload_leaves_out_items_without_due_date_or_past_the_window() -> None:
    items = [
        item("rep", None),
        item("rep", MONDAY + timedelta(days=14)),  # the first day after a two-week window
        item("am", MONDAY + timedelta(days=13)),  # the last day in it
    ]

    assert weekly_workload(items, START, 2, NEW_YORK) == {"am": [0, 1]}
    assert weekly_workload([], START, 2, NEW_YORK) == {}


def test_workload_puts_an_item_in_the_week_of_its_day_in_the_viewers_zone() -> None:
    # Monday 03:00 UTC is Sunday 22:00 in New York: the week before, for a New York viewer, not for a UTC one.
    late_sunday = datetime(2026, 12, 14, 3, tzinfo=UTC)

    assert weekly_workload([item("rep", late_sunday)], START, 2, NEW_YORK) == {"rep": [1, 0]}
    assert weekly_workload([item("rep", late_sunday)], START, 2, UTC) == {"rep": [0, 1]}


def test_workload_accepts_items_from_a_generator_and_sorts_owners() -> None:
    owners = ["zoe", "am", "rep"]

    workload = weekly_workload((item(owner, MONDAY) for owner in owners), START, 1, NEW_YORK)

    assert list(workload) == ["am", "rep", "zoe"]


def test_workload_refuses_a_window_of_no_weeks() -> None:
    with pytest.raises(ValueError, match="weeks must be at least 1"):
        weekly_workload([], START, 0, NEW_YORK)


def test_workload_chart_stacks_one_series_per_owner_in_one_bar_per_week_labelled_by_its_monday() -> None:
    root = parse(workload_svg({"rep": [1, 2, 0, 4], "rep:owner-17": [0, 1, 3, 0]}, START))

    assert axis_labels(root, "x") == ["Dec 7", "Dec 14", "Dec 21", "Dec 28"]
    assert legend(root) == ["rep", "rep:owner-17"]
    assert [[value for _, value in series] for series in bars(root)] == [["1", "2", "0", "4"], ["0", "1", "3", "0"]]
    assert axis_labels(root, "y") == ["0", "1", "2", "3", "4"]  # the tallest stack, in whole items
    printed = [text.text for text in with_class(root, "text", "value")]
    assert "0" not in printed  # a zero segment gets no label piled onto its neighbour's


def test_stacked_weeks_takes_any_series_and_title_and_labels_weeks_across_a_year_end() -> None:
    root = parse(stacked_weeks_svg({"visits": [3, 1], "emails": [2, 5]}, date(2026, 12, 31), "Forecast"))

    assert root.findtext(SVG + "title") == "Forecast"
    assert legend(root) == ["visits", "emails"]
    assert axis_labels(root, "x") == ["Dec 28", "Jan 4"]


# --- every chart ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("draw", ALL_CHARTS.values(), ids=ALL_CHARTS.keys())
def test_every_chart_inlines_in_html_under_a_strict_policy(draw: Callable[[], str]) -> None:
    svg = draw()
    root = parse(svg)

    assert svg.startswith("<svg")  # no XML declaration or stylesheet instruction before it
    assert "<!--" not in svg
    assert not [element for element in root.iter() if element.tag.endswith("script")]
    # The only URLs are namespace names, which nothing fetches.
    assert set(re.findall(r"https?://[^\s\"'<>)]*", svg)) <= {"http://www.w3.org/2000/svg"}
    assert not re.search(r"url\(|@import|href", svg)
    assert not [element for element in root.iter() if "style" in element.attrib]
    assert root.get("viewBox") == "0 0 800 360"
    assert root.findtext(SVG + "title")


@pytest.mark.parametrize(
    "draw",
    [
        lambda: funnel_svg([]),
        lambda: stage_time_svg([], {"targeting": "Targeting"}),
        lambda: workload_svg({}, START),
        lambda: stacked_weeks_svg({"visits": [], "emails": []}, START, "Forecast"),
    ],
    ids=["funnel", "stage time", "workload", "stacked weeks"],
)
def test_an_empty_input_draws_a_chart_saying_no_data(draw: Callable[[], str]) -> None:
    root = parse(draw())

    assert [text.text for text in with_class(root, "text", "no_data")] == ["No data"]
    assert bars(root) == []


def test_a_stage_title_with_markup_is_escaped_text_in_a_well_formed_svg() -> None:
    svg = funnel_svg([pipeline_row("contract", HOSTILE, 2)])
    root = parse(svg)

    assert bars(root) == [[(HOSTILE, "2")]]
    assert HOSTILE in [title.text for title in root.iter(SVG + "title")]  # the full title beside the shortened one
    assert "<script" not in svg
    assert "&lt;script&gt;" in svg


def test_owner_ids_with_markup_are_escaped_text_in_the_legend() -> None:
    svg = workload_svg({HOSTILE: [1, 2]}, START)
    root = parse(svg)

    assert legend(root) == [HOSTILE]
    assert "<script" not in svg
    assert "&lt;script&gt;" in svg


def test_a_chart_drawn_as_png_is_the_svg_at_twice_its_size() -> None:
    svg = stacked_weeks_svg({"visits": [3, 4], "emails": [1, 0]}, date(2026, 12, 7), "Forecast")
    png = png_drawer()(svg)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
    view_box = [float(n) for n in re.search(r'viewBox="([^"]+)"', svg).group(1).split()]  # type: ignore[union-attr]
    assert (width, height) == (2 * view_box[2], 2 * view_box[3])


def test_without_the_cairo_library_asking_for_png_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cairosvg", None)  # what a failed import of cairocffi leaves the caller
    with pytest.raises(RuntimeError, match=r"needs the cairo library .*apt-get install libcairo2"):
        png_drawer()
