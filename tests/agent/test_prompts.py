"""Prompt variants: loading, overrides, errors, and golden renderings of the exact text."""

from __future__ import annotations

import shutil

import pytest

from prompts.variant import PROMPTS_DIR, VariantError, list_variants, load_variant
from tools.scoreboard import ConceptEntry, Scoreboard, format_score_lines, format_tried_lines


def board() -> Scoreboard:
    rows = [("red fruit", 2.5), ("apple", 3.25), ("fire truck", 0.125), ("strawberry", 2.75)]
    return Scoreboard(
        [
            ConceptEntry(c, s, [s], ["0" * 64], ["p"], [1], i, "proposal")
            for i, (c, s) in enumerate(rows)
        ]
    )


GOLDEN_PAPER_PROPOSAL = """Scoreboard after 4 of 10 rounds (concept: score, best first):
apple: 3.2500
strawberry: 2.7500
red fruit: 2.5000

Concepts already tried (never propose any of these again):
- red fruit
- apple
- fire truck
- strawberry

Propose one new concept of one to three words that you expect to score higher than the best
entry so far. Answer by calling propose_concept with the concept only.
"""

GOLDEN_PAPER_SUMMARY_HEAD = """The search is over. Every concept tried, with its score (best first):
apple: 3.2500
strawberry: 2.7500
red fruit: 2.5000
fire truck: 0.1250
"""


def test_shipped_variants():
    assert {"paper", "agentic"} <= set(list_variants())
    paper = load_variant("paper")
    assert paper.settings.strategy == "paper"
    assert (paper.settings.iterations, paper.settings.images_per_concept) == (10, 5)
    assert paper.settings.scoreboard_size == 10
    assert load_variant("agentic").settings.strategy == "agentic"


def test_golden_paper_proposal():
    variant = load_variant("paper")
    scores = board()
    text = variant.render(
        "proposal",
        iteration=4,
        iterations=10,
        scoreboard=format_score_lines(scores.top(3)),
        tried=format_tried_lines(scores.tried()),
    )
    assert text == GOLDEN_PAPER_PROPOSAL


def test_golden_paper_summary_and_image_prompt():
    variant = load_variant("paper")
    text = variant.render("summary", scoreboard=format_score_lines(board().ranked()))
    assert text.startswith(GOLDEN_PAPER_SUMMARY_HEAD)
    assert "submit_explanation" in text
    assert (
        variant.image_prompt("red fruit", 0)
        == "a realistic photo of a red fruit, front view, daylight"
    )
    assert variant.image_prompt("red fruit", 6) == (
        "a realistic photo of a red fruit, side view, soft studio lighting"
    )


def test_overrides_and_a_copied_variant(tmp_path):
    assert load_variant("paper", iterations=3, temperature=0.0).settings.iterations == 3
    copy = tmp_path / "terse"
    shutil.copytree(PROMPTS_DIR / "paper", copy)
    (copy / "proposal.txt").write_text("Best so far:\n$scoreboard\nNext?")
    variant = load_variant(str(copy))
    assert variant.name == "terse"
    assert variant.render(
        "proposal", scoreboard="a: 1.0000", tried="", iteration=0, iterations=1
    ) == ("Best so far:\na: 1.0000\nNext?\n")
    assert variant.fingerprint() != load_variant("paper").fingerprint()


def test_bad_variants_say_what_to_do(tmp_path):
    with pytest.raises(VariantError, match=r"unknown prompt variant 'papper'; shipped variants: "):
        load_variant("papper")
    with pytest.raises(VariantError, match="is not valid"):
        load_variant("paper", iterations=-1)
    broken = tmp_path / "broken"
    shutil.copytree(PROMPTS_DIR / "paper", broken)
    (broken / "summary.txt").unlink()
    with pytest.raises(VariantError, match=r"needs summary\.txt"):
        load_variant(str(broken))
    (broken / "summary.txt").write_text("$nonsense")
    with pytest.raises(VariantError, match=r"uses \$nonsense"):
        load_variant(str(broken)).render("summary", scoreboard="")
