"""The scorecard's visual-token section: tokens.<model>.image_tokens, tokens.student.method, time to first token."""

from __future__ import annotations

from dsvl_adapt.score.scorecard import Scorecard, render_markdown
from dsvl_adapt.score.tokens import ImageTokens


def _card(tokens: dict[str, ImageTokens]) -> Scorecard:
    return Scorecard(vertical="medical", metric="finding_f1", accuracy={"teacher": 0.8, "student": 0.78},
                     retention=0.975, metrics={"teacher": {"finding_f1": 0.8}, "student": {"finding_f1": 0.78}},
                     tokens=tokens)


def test_a_card_with_a_token_budget_shows_k_the_method_and_both_models_time_to_first_token(tmp_path):
    card = _card({"teacher": ImageTokens(image_tokens=576, ttft_ms=900.0, runtime="onnxruntime"),
                  "student": ImageTokens(image_tokens=144, method="select", keep=0.25, ttft_ms=250.0,
                                         runtime="onnxruntime")})
    dumped = card.model_dump(mode="json")
    assert dumped["tokens"]["teacher"]["image_tokens"] == 576
    assert dumped["tokens"]["student"]["method"] == "select"
    markdown = render_markdown(card)
    assert "| student | 144 | select | 0.250 | 250.0 | onnxruntime |" in markdown
    card.write(tmp_path)
    html = (tmp_path / "scorecard.html").read_text()
    assert 'id="tokens"' in html and "accuracy against time to first token" in html
    assert Scorecard.model_validate_json((tmp_path / "scorecard.json").read_text()).tokens == card.tokens


def test_a_card_without_a_budget_has_no_token_section(tmp_path):
    card = _card({})
    assert "Visual tokens" not in render_markdown(card)
    card.write(tmp_path)
    assert 'id="tokens"' not in (tmp_path / "scorecard.html").read_text()
