"""`usage_chart`: the usage page's SVG, read back with the standard library's XML parser (no browser needed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from clexproxy.web.chart import MIN_BAR, DayBar, nice_ceiling, summary, usage_chart

SVG = "{http://www.w3.org/2000/svg}"


def parse(days: list[DayBar], title: str = "Credits used per day") -> ET.Element:
    return ET.fromstring(str(usage_chart(days, title)))


def bars(root: ET.Element) -> list[ET.Element]:
    return root.findall(f"{SVG}rect")


def month(values: list[int]) -> list[DayBar]:
    return [DayBar(f"2026-11-{i + 1:02d}", credits, calls=credits // 10) for i, credits in enumerate(values)]


def test_one_bar_per_day_with_its_title_and_heights_in_proportion() -> None:
    root = parse(month([10, 20, 40, 0]))
    assert root.get("id") == "usage-chart"
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title").text == "Credits used per day"  # type: ignore[union-attr]
    found = bars(root)
    assert [b.get("data-day") for b in found] == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert [b.find(f"{SVG}title").text for b in found] == [  # type: ignore[union-attr]
        "2026-11-01: 10 credits, 1 call",
        "2026-11-02: 20 credits, 2 calls",
        "2026-11-03: 40 credits, 4 calls",
        "2026-11-04: 0 credits, 0 calls",
    ]
    heights = [float(b.get("height", "")) for b in found]
    assert heights[3] == 0
    assert abs(heights[1] - 2 * heights[0]) < 0.2 and abs(heights[2] - 4 * heights[0]) < 0.2
    # every bar stands on the same base line
    assert len({round(float(b.get("y", "")) + float(b.get("height", "")), 1) for b in found}) == 1


def test_axis_labels_use_a_round_top_and_the_summary_names_total_and_busiest_day() -> None:
    root = parse(month([10, 47, 3]))
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert labels[:5] == ["0", "12.5", "25", "37.5", "50"]  # 47 rounds up to 50
    assert "11-01" in labels
    assert root.get("aria-label") == (
        "Credits used per day, 2026-11-01 to 2026-11-03: 60 credits in all; the most on 2026-11-02 (47 credits)."
    )


def test_empty_data_draws_an_empty_axis_and_says_so() -> None:
    root = parse([])
    assert bars(root) == []
    assert "No usage yet" in [t.text for t in root.findall(f"{SVG}text")]
    assert root.get("aria-label") == "No usage to chart."
    zero = parse(month([0] * 30))
    assert all(float(b.get("height", "")) == 0 for b in bars(zero))
    assert zero.get("aria-label") == "Credits used per day, 2026-11-01 to 2026-11-30: none."


def test_one_huge_day_keeps_the_small_days_visible_and_inside_the_chart() -> None:
    root = parse(month([1, 2_000_000, 1, 0] + [3] * 26))
    found = bars(root)
    assert len(found) == 30
    heights = [float(b.get("height", "")) for b in found]
    assert heights[0] == MIN_BAR and heights[2] == MIN_BAR and heights[3] == 0
    assert all(float(b.get("y", "")) >= 0 for b in found)
    labels = [t.text for t in root.findall(f"{SVG}text")]
    assert labels[4] == "2,000,000"
    # about six day labels for thirty days, not thirty overlapping ones
    assert 5 <= len([t for t in labels if t and t.startswith("11-")]) <= 7


def test_text_is_escaped_and_no_style_attribute_is_used() -> None:
    markup = str(usage_chart([DayBar("<b>&", 5)], title='<script>alert("x")</script>'))
    assert "<script>" not in markup and "<b>" not in markup
    assert "&lt;script&gt;" in markup
    assert "style=" not in markup
    ET.fromstring(markup)  # still well-formed


def test_nice_ceiling() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 2, 3, 7, 10, 11, 21, 26, 99, 101, 2_000_000)] == [
        1, 1, 2, 5, 10, 10, 20, 25, 50, 100, 200, 2_000_000,
    ]
    assert summary([DayBar("2026-11-01", 1, 1)]) == (
        "Credits used per day, 2026-11-01: 1 credit in all; the most on 2026-11-01 (1 credit)."
    )
