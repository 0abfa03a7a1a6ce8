"""The web board's charts (issue 16): pure functions from report rows to an SVG string the page inlines.

Why server-side: the board is plain HTML under a strict Content-Security-Policy (no script, nothing fetched from
elsewhere) and must work offline, so a chart has to arrive finished, not be drawn by a browser library. The same
string can go into an email or a saved report unchanged.

Why pygal: it is pure Python and writes SVG natively (no numpy, no image backend, no headless browser), so the
charts cost one small dependency and render in milliseconds per request. Its defaults are meant for a page that
loads its tooltip script from a CDN, which the board must not do; `_render` turns all of that off (no script, no
XML declaration so the string can be inlined, no comments naming URLs) and the style names only local font
families, so the only thing the chart asks of the page is an inline `<style>`, which the board's policy allows as
the intake pages do (`style-src 'unsafe-inline'`).

Labels are data (stage titles typed by SOP authors, owner ids): pygal builds the SVG as an element tree, so they are
escaped by the serializer, never pasted into markup.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, timedelta, tzinfo
from typing import Any

import pygal
from pygal.style import Style

from sopflow.reports import PipelineRow, StageTimeRow, utc
from sopflow.work_queue import WorkItem

WIDTH = 800
HEIGHT = 360
NO_DATA = "No data"
# At most this many steps on a count axis: more and the labels crowd; fewer and a reader cannot read a bar's value.
MAX_COUNT_STEPS = 8

# Local font families only: a `googlefont:` family would make pygal link Google's stylesheet.
_STYLE = Style(
    font_family='system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif',
    background="transparent",
    plot_background="rgba(255, 255, 255, 1)",
    title_font_size=18,
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=13,
    value_font_size=12,
    no_data_font_size=32,
)


def funnel_svg(rows: Sequence[PipelineRow]) -> str:
    """Open deals per stage, one bar per stage in the rows' order (the pipeline report sorts them in playbook
    order, so the bars read as the funnel left to right).

    One playbook per chart: stage ids and titles of two playbooks side by side would read as one pipeline, so rows
    of more than one playbook raise ValueError (a caller's mistake, not data to draw).
    """
    playbooks = {row.playbook for row in rows}
    if len(playbooks) > 1:
        raise ValueError(f"funnel_svg draws one playbook per chart, got {', '.join(sorted(playbooks))}")
    title = "Open deals per stage"
    if not rows:
        return _no_data(title)
    chart = _chart(pygal.Bar, title, show_legend=False, print_values=True)
    chart.x_labels = [row.stage_title for row in rows]
    chart.y_labels = _ticks(max(row.count for row in rows))
    chart.add("Open deals", [row.count for row in rows])
    return _render(chart)


def stage_time_svg(rows: Sequence[StageTimeRow], titles: Mapping[str, str]) -> str:
    """Median and p90 days in each stage as grouped bars, in the rows' order (time_in_stage's stage order).

    `titles` maps stage ids to the titles readers know; a stage missing from it (renamed or removed since the
    stays were recorded) is labelled by its id rather than dropped, since its stays still happened.
    """
    title = "Days in stage (completed stays)"
    if not rows:
        return _no_data(title)
    chart = _chart(pygal.Bar, title, value_formatter=_days, legend_at_bottom=True, y_title="days", print_values=True)
    chart.x_labels = [titles.get(row.stage, row.stage) for row in rows]
    # Whole days on the axis, as for counts: pygal's own ticks for 13.6 days come one per day, too dense to read.
    chart.y_labels = _ticks(math.ceil(max(max(row.median_days, row.p90_days) for row in rows)))
    chart.add("Median", [row.median_days for row in rows])
    chart.add("90th percentile", [row.p90_days for row in rows])
    return _render(chart)


def weekly_workload(items: Iterable[WorkItem], start: date, weeks: int, zone: tzinfo) -> dict[str, list[int]]:
    """Per owner, how many work items fall due in each of `weeks` weeks from the Monday of `start`'s week.

    Weeks are calendar weeks in `zone` (the viewer's): an item due late Sunday evening there belongs to that
    Sunday's week even though it is Monday in UTC. Anything due before the window is overdue and counts in week 0,
    because it is work to do now; items without a due date or due after the window are left out (there is no week
    to put them in). Owners are sorted so that each keeps its colour from one render to the next.
    """
    if weeks < 1:
        raise ValueError(f"weeks must be at least 1, got {weeks}")
    monday = start - timedelta(days=start.weekday())
    counts: defaultdict[str, list[int]] = defaultdict(lambda: [0] * weeks)
    for item in items:
        if item.due_at is None:
            continue
        due_day = utc(item.due_at).astimezone(zone).date()
        week = max(0, (due_day - monday).days // 7)
        if week < weeks:
            counts[item.owner][week] += 1
    return {owner: counts[owner] for owner in sorted(counts)}


def workload_svg(workload: Mapping[str, Sequence[int]], start: date) -> str:
    """The work due per week, stacked by owner (from `weekly_workload`): who is busy when, and in which week."""
    return stacked_weeks_svg(workload, start, "Work items due per week (overdue in the first)")


def stacked_weeks_svg(series: Mapping[str, Sequence[int]], start: date, title: str) -> str:
    """Counts per week stacked by series, one bar per week labelled by its Monday ("Dec 7"), weeks starting on the
    Monday of `start`'s week. General so that other weekly counts (a forecast's visits and emails) look the same
    as the workload.

    Zero segments get no "0" label (several would pile up on one line); a week whose series are all zero keeps its
    place on the axis so that the weeks stay evenly spaced.
    """
    weeks = max((len(values) for values in series.values()), default=0)
    if not weeks:
        return _no_data(title)
    chart = _chart(pygal.StackedBar, title, legend_at_bottom=True, print_values=True, print_zeroes=False)
    monday = start - timedelta(days=start.weekday())
    chart.x_labels = [_day_label(monday + timedelta(weeks=week)) for week in range(weeks)]
    totals = [sum(values[week] for values in series.values() if week < len(values)) for week in range(weeks)]
    chart.y_labels = _ticks(max(totals))
    for name, values in series.items():
        chart.add(name, list(values))
    return _render(chart)


def png_drawer() -> Callable[[str], bytes]:
    """What turns one of these charts into a PNG, for a file to mail or paste where SVG is not taken: cairosvg, the
    route pygal itself offers (`render_to_png`), at twice the SVG's size on white. A RuntimeError naming what to
    install when the system's cairo library is missing (cairocffi loads it on import): asked before a long forecast
    runs, not after."""
    try:
        import cairosvg
    except (ImportError, OSError) as exc:
        raise RuntimeError(
            "a PNG chart needs the cairo library (Debian/Ubuntu: apt-get install libcairo2; macOS: brew install "
            "cairo); name the file .svg to draw SVG instead"
        ) from exc

    def draw(svg: str) -> bytes:
        png = cairosvg.svg2png(bytestring=svg.encode(), scale=2, background_color="white")
        assert isinstance(png, bytes)  # no write_to: the image is returned
        return png

    return draw


# --- helpers ---------------------------------------------------------------------------------------------------------


def _chart(kind: Callable[..., Any], title: str, **config: Any) -> Any:
    """A chart of `kind` with the board's look and no browser script: `js=[]` drops pygal's CDN tooltip script.

    Sized in the viewBox only (no width/height attributes), so the inlined SVG scales to its column.
    """
    return kind(
        title=title,
        width=WIDTH,
        height=HEIGHT,
        style=_STYLE,
        js=[],
        disable_xml_declaration=True,
        no_data_text=NO_DATA,
        x_label_rotation=20,
        truncate_label=24,
        **config,
    )


def _no_data(title: str) -> str:
    """pygal's "No data" in place of the plot, without the empty axis it would draw behind it (0 to 1 in tenths)."""
    chart = _chart(pygal.Bar, title, show_legend=False, show_y_labels=False, show_y_guides=False)
    return _render(chart)


def _render(chart: Any) -> str:
    """The SVG as a string for inlining in HTML, with nothing a strict Content-Security-Policy would refuse."""
    chart.add_xml_filter(_strip_scripts_and_comments)
    svg = chart.render()
    assert isinstance(svg, str)  # disable_xml_declaration makes pygal return text, not bytes
    return svg


def _strip_scripts_and_comments(root: Any) -> Any:
    """pygal always writes an inline `<script>` carrying its config for the tooltip script (even with `js=[]`),
    which the page's policy would block and report, comments naming pygal's URLs, and an empty tooltip box for that
    script to fill (with the chart's only `style` attribute); none of them draws anything without the script.

    Comments are recognised by their callable tag, as both xml.etree and lxml (pygal uses it when installed) do.
    """
    for parent in list(root.iter()):
        for child in list(parent):
            if (
                callable(child.tag)
                or _local_name(child.tag) == "script"
                or "tooltip-overlay" in child.get("class", "").split()
            ):
                parent.remove(child)
    return root


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ticks(top: int) -> list[int]:
    """Whole-number y labels from 0 to at least `top`: pygal's own ticks would put 0.5 deals on the axis.

    The step is 1, 2 or 5 times a power of ten, the smallest that keeps the axis within MAX_COUNT_STEPS steps.
    """
    top = max(top, 1)
    magnitude = 10 ** max(0, math.floor(math.log10(top / MAX_COUNT_STEPS))) if top > MAX_COUNT_STEPS else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if top / (m * magnitude) <= MAX_COUNT_STEPS)
    return list(range(0, math.ceil(top / step) * step + 1, step))


def _days(value: float | None) -> str:
    """Tenths of a day for the values (a median of 0.3 days is not 0), whole days on the axis read as "14"."""
    return "" if value is None else f"{value:.1f}".removesuffix(".0")


def _day_label(day: date) -> str:
    """ "Dec 7": month and day without a leading zero (strftime's %-d is not portable)."""
    return f"{day:%b} {day.day}"
