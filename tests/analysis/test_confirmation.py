"""The confirmation's rule: ablations from label text, the simplest within the margin, a
conjunction must beat its parts, an OR needs every alternative, twins count once."""

from __future__ import annotations

from analysis.confirmation import (
    ConfirmedCandidate,
    ablations,
    alternatives,
    choose_inhibitor,
    choose_label,
    complexity,
    duplicates,
    missing_union,
)

MARGIN = 0.03


def candidate(concept: str, auc: float, rank: int = 0, searched: bool = True, values=None):
    return ConfirmedCandidate(
        concept=concept,
        source="search" if searched else "ablation",
        auc=auc,
        auc_low=float("nan"),
        auc_high=float("nan"),
        mean=auc,
        search_score=auc if searched else None,
        search_rank=rank,
        activations=list(values) if values is not None else [auc, rank, len(concept)],
    )


def test_ablations_drop_one_attribute_at_a_time():
    assert ablations("checkered blue objects") == ["blue objects", "checkered objects"]
    assert ablations("many small objects") == ["small objects", "many objects"]
    assert ablations("blue") == [] and ablations("blue objects") == []
    assert ablations("red on a blue background") == ["red", "blue background"]


def test_a_background_is_one_attribute_with_its_colour():
    assert ablations("green background") == [] and complexity("green background") == 1
    assert ablations("gray background and blue") == ["gray background", "blue"]
    assert ablations("small objects on a green background") == ["small objects", "green background"]


def test_an_or_splits_into_alternatives_sharing_their_noun():
    assert alternatives("pink or orange objects") == ["pink objects", "orange objects"]
    assert alternatives("stars or crosses") == ["stars", "crosses"]
    assert ablations("stars or crosses") == ["stars", "crosses"]
    assert alternatives("red circle") == []
    assert complexity("stars or crosses") == 2 and complexity("many small objects") == 2


def test_an_extra_attribute_within_the_margin_loses_to_the_simpler_label():
    # the search's maximum had an extra attribute; on fresh images the part is as good
    found = [candidate("checkered blue objects", 0.97, 0), candidate("blue objects", 0.955, 5)]
    choice = choose_label(found, MARGIN)
    assert choice.label == "blue objects"
    assert not found[0].kept and "does not beat its part 'blue objects'" in found[0].note
    assert "chosen" in found[1].note


def test_a_conjunction_that_beats_each_part_wins():
    found = [
        candidate("red circle", 0.99, 0),
        candidate("red", 0.70, 1),
        candidate("circle", 0.72, 2),
    ]
    choice = choose_label(found, MARGIN)
    assert choice.label == "red circle" and "beats each of its parts" in choice.reason


def test_an_attribute_whose_siblings_do_as_well_is_not_specific():
    # the unit likes a black background with any object on it, not green ones
    found = [
        candidate("black background and green", 0.994, 0),
        candidate("black background and black", 0.990, 1),
        candidate("black background", 0.93, 2),
        candidate("green", 0.82, 3),
        candidate("black", 0.90, 4),
    ]
    choice = choose_label(found, MARGIN)
    assert choice.label == "black background"
    assert "sibling" in found[0].note and "not specific" in found[0].note
    # a conjunction the unit really wants has no sibling that does as well
    wanted = [
        candidate("blue triangle", 0.99, 0),
        candidate("blue square", 0.62, 1),
        candidate("blue", 0.7, 2),
        candidate("triangle", 0.72, 3),
    ]
    assert choose_label(wanted, MARGIN).label == "blue triangle"


def test_two_backgrounds_joined_by_and_are_split_as_backgrounds():
    assert ablations("purple and yellow background") == ["purple background", "yellow background"]


def test_an_or_stays_only_when_every_alternative_fires():
    real_or = [
        candidate("stars or crosses", 0.97),
        candidate("stars", 0.96, 1),
        candidate("crosses", 0.95, 2),
    ]
    assert choose_label(real_or, MARGIN).label == "stars or crosses"
    spurious = [
        candidate("red or blue objects", 0.96),
        candidate("red objects", 0.96, 1),
        candidate("blue objects", 0.5, 2),
    ]
    choice = choose_label(spurious, MARGIN)
    assert choice.label == "red objects"
    assert "does not fire on its own" in spurious[0].note


def test_a_kept_or_stands_for_its_alternatives_in_any_wording():
    found = [
        candidate("pink or orange objects", 0.987),
        candidate("orange", 0.938, 1),
        candidate("pink", 0.935, 2),
        candidate("pink objects", 0.912, 3, searched=False),
        candidate("orange objects", 0.916, 4, searched=False),
    ]
    assert choose_label(found, 0.05).label == "pink or orange objects"
    assert not found[1].kept and "alternative of a kept OR" in found[1].note


def test_an_or_without_measured_alternatives_is_not_kept():
    found = [candidate("stars or crosses", 0.97), candidate("circle", 0.9, 1)]
    assert choose_label(found, MARGIN).label == "circle"


def test_candidates_rendering_the_same_images_count_once():
    same = [1.0, 2.0, 3.0]
    found = [
        candidate("many small objects", 0.95, 0, values=same),
        candidate("many objects", 0.95, 3, searched=False, values=same),
        candidate("small objects", 0.8, 4, searched=False),
    ]
    assert duplicates(found) == {"many objects": "many small objects"}
    choice = choose_label(found, MARGIN)
    assert choice.label == "many small objects"
    assert "renders the same images" in found[1].note


def test_two_unrelated_firing_candidates_suggest_their_or():
    found = [candidate("orange", 0.95), candidate("pink", 0.93, 1), candidate("red", 0.6, 2)]
    assert missing_union(found) == ("orange or pink", "union of 'orange' and 'pink'")
    related = [candidate("red", 0.95), candidate("red circle", 0.93, 1)]
    assert missing_union(related) is None
    same_colour = [candidate("blue objects", 0.96), candidate("blue background", 0.94, 1)]
    assert missing_union(same_colour) is None
    conjunctions = [candidate("black background and green", 0.99), candidate("brown star", 0.97)]
    assert missing_union(conjunctions) is None  # an OR of single attributes only
    done = [*found, candidate("orange or pink", 0.95, 3)]
    assert missing_union(done) is None


def test_the_inhibitor_is_the_simplest_concept_near_the_lowest_auc():
    found = [
        candidate("red circle", 0.03, 0),
        candidate("red", 0.05, 1),
        candidate("blue", 0.45, 2),
    ]
    assert choose_inhibitor(found, 0.05).concept == "red"
    assert choose_inhibitor([], 0.05) is None
