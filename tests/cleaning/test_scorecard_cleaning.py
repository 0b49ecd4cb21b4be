"""The clean stage's figures in the scorecard: rows in, flagged by level and reason, dropped, fixed, usable share."""

from __future__ import annotations

from pathlib import Path


def test_scorecard_shows_the_cleaning_figures(planted_copy: Path, tmp_path: Path):
    from dsvl_adapt.cleaning.stage import clean_dataset
    from dsvl_adapt.score.html import render_html
    from dsvl_adapt.score.scorecard import DataCleaning, Scorecard, load_scorecard, render_markdown

    report, _ = clean_dataset(["vertical=ecommerce", "model=reference-tiny", f"data.source={planted_copy}",
                               "clean.level2=false"], tmp_path / "out", log=lambda m: None)
    data = DataCleaning.from_figures(report.figures())
    assert data is not None and data.rows_in == 126 and data.dropped == 4 and data.flagged["duplicate"] == 1
    card = Scorecard(vertical="ecommerce", metric="attribute_accuracy", accuracy={"teacher": 0.9}, retention=None,
                     metrics={"teacher": {"attribute_accuracy": 0.9}}, data=data)
    card.write(tmp_path / "card")
    again = load_scorecard(tmp_path / "card")
    assert again.data == data
    markdown = render_markdown(card)
    assert "## Data cleaning" in markdown
    assert f"usable share {data.usable_share:.1%}" in markdown and "level 1: 8" in markdown
    assert "leak_test 1" in render_html(card)
    assert DataCleaning.from_figures(None) is None
