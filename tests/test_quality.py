"""Degeneration detectors, retry seeds and candidate choice on crafted strings (vidcap.quality)."""

from __future__ import annotations

import json

import pytest

from vidcap.config import with_defaults
from vidcap.judge import Judge
from vidcap.prompts import Pending
from vidcap.quality import (
    choose,
    compression_ratio,
    consensus,
    degeneration,
    repeated_ngram_share,
    retry_presence_penalty,
    retry_seed,
    script_shares,
)
from vidcap.structured import load_schema, parse_answer

DEFAULT_SCHEMA = load_schema(None)

GOOD = (
    "A person walks a dog along a quiet suburban street in the early morning. The dog, a medium-sized brown "
    "retriever, pulls gently on its red leash and stops to sniff a lamppost. The person wears a gray hoodie "
    "and jeans and holds a coffee cup in the other hand. Parked cars line the street and the trees have orange "
    "autumn leaves. The camera follows from behind at walking pace."
)
# a real-looking caption that falls into a loop, the failure Qwen-VL users report most
LOOP = GOOD + " The dog is walking on the street." * 25
SHORT_LOOP = "The video shows a man. The video shows a man. The video shows a man. The video shows a man."
CHINESE = "一个人在安静的郊区街道上遛狗。狗是一只棕色的寻回犬，它拉着红色的狗绳，停下来闻路灯柱。"
MIXED = (
    GOOD[:120]
    + " 他穿着灰色的连帽衫和牛仔裤，一只手拿着咖啡杯，另一只手牵着狗绳，汽车停在街道两旁，树叶是橙色的。"
)


@pytest.fixture
def quality():
    return with_defaults("quality")


def test_normal_caption_passes_every_default_check(quality):
    assert degeneration(GOOD, quality) is None
    assert degeneration(GOOD, {**quality, "language": "latin", "min_words": 20}) is None


@pytest.mark.parametrize("text", [None, "", "   ", "...!!!", "\n\t"])
def test_empty_output_is_degenerate(quality, text):
    assert degeneration(text, quality) == "empty"


def test_too_short_by_min_words(quality):
    assert degeneration("A dog.", quality) is None  # default min_words 1: short answers allowed
    assert degeneration("A dog.", {**quality, "min_words": 5}) == "too short: 2 words < min_words 5"


def test_loops_are_caught_by_repeated_ngrams(quality):
    assert repeated_ngram_share(GOOD, 4) == 0.0
    assert repeated_ngram_share(SHORT_LOOP, 4) == 1.0
    assert degeneration(SHORT_LOOP, quality).startswith("loop: 1.00 of 4-grams repeated")
    assert degeneration(LOOP, quality).startswith("loop:")


def test_loops_are_caught_by_compression_ratio_alone(quality):
    only_ratio = {**quality, "max_repeat_ngram_share": None}
    assert compression_ratio(GOOD) < 2.0 and compression_ratio(LOOP) > quality["max_compression_ratio"]
    assert degeneration(LOOP, only_ratio).startswith("loop: compression ratio")
    assert degeneration(GOOD, only_ratio) is None


def test_disabled_checks_let_loops_through(quality):
    off = {**quality, "max_repeat_ngram_share": None, "max_compression_ratio": None}
    assert degeneration(LOOP, off) is None


def test_wrong_script_only_when_a_language_is_set(quality):
    assert degeneration(CHINESE, quality) is None
    assert (
        degeneration(CHINESE, {**quality, "language": "latin"})
        == "wrong script: 0.00 of letters latin (mostly cjk)"
    )
    assert degeneration(CHINESE, {**quality, "language": "cjk"}) is None
    assert degeneration(MIXED, {**quality, "language": "latin"}).startswith("wrong script:")
    assert degeneration(MIXED, {**quality, "language": ["latin", "cjk"]}) is None
    # a few foreign letters (a quoted sign) do not fail a caption
    assert degeneration(GOOD + " A sign reads 欢迎.", {**quality, "language": "latin"}) is None


def test_script_shares_ignore_digits_and_punctuation():
    assert script_shares("Ωmega 123 !!") == {"latin": 0.8, "greek": 0.2}
    assert script_shares("123 ...") == {}


def test_unknown_script_is_a_clear_error(quality):
    with pytest.raises(ValueError, match="quality.language: unknown script 'klingon'"):
        degeneration(GOOD, {**quality, "language": "klingon"})


def test_retry_seeds_are_deterministic_distinct_and_keep_the_first_attempt():
    assert retry_seed(12345, 0) == 12345
    seeds = [retry_seed(12345, k) for k in range(1, 6)]
    assert seeds == [retry_seed(12345, k) for k in range(1, 6)]
    assert len(set(seeds) | {12345}) == 6
    assert all(0 <= s < 2**32 for s in seeds)
    assert retry_seed(54321, 1) != retry_seed(12345, 1)
    assert retry_seed(None, 3) is None


def test_presence_penalty_rises_per_retry_within_vllm_range():
    assert retry_presence_penalty(0.0, 0, 0.5) == 0.0
    assert retry_presence_penalty(0.0, 2, 0.5) == 1.0
    assert retry_presence_penalty(1.5, 3, 0.5) == 2.0


def test_consensus_picks_the_central_candidate():
    candidates = [
        "A cat jumps onto a kitchen table.",
        "A man rides a red bicycle down a hill in the rain.",
        "A man rides a red bicycle down a steep hill.",
        "Fireworks explode over a dark harbor.",
        "A man on a red bicycle rides down a hill in the rain.",
    ]
    # candidate 1 sits between the other two bicycle captions: "rides a red bicycle down" with 2,
    # "a hill in the rain" with 4; the outliers (0, 3) share little with anything
    assert consensus(candidates) == 1
    assert choose(candidates, "consensus") == 1
    assert choose(candidates, "consensus", [True, False, True, True, True]) in (2, 4)
    assert choose(candidates, "first") == 0
    assert choose(candidates, "all") == 0


def test_consensus_exact_central_case():
    # b is a and c joined: it is the only candidate similar to both
    a, c = "red car on a wet street at night", "dog running on a sunny beach"
    b = a + " " + c
    assert consensus([a, c, b]) == 2


def test_consensus_ties_go_to_the_first():
    assert consensus(["same text", "same text", "same text"]) == 0
    assert consensus(["alpha beta", "gamma delta"]) == 0
    assert choose(["x y z"], "consensus") == 0


def test_choose_skips_degenerate_candidates_unless_all_are():
    candidates = ["", "A dog runs on a beach.", "A dog runs along the beach."]
    eligible = [degeneration(c, with_defaults("quality")) is None for c in candidates]
    assert eligible == [False, True, True]
    assert choose(candidates, "first", eligible) == 1
    assert choose(candidates, "consensus", eligible) in (1, 2)
    assert choose(candidates, "first", [False, False, False]) == 0


def test_choose_refuses_unknown_keep_mode():
    with pytest.raises(ValueError, match="candidates.keep: 'best'"):
        choose(["a"], "best")


def test_schema_defaults_of_the_new_sections():
    assert with_defaults("candidates") == {"n": 1, "keep": "first"}
    quality = with_defaults("quality")
    assert quality["retries"] == 0 and quality["language"] is None
    assert with_defaults("quality", {"retries": 2})["retries"] == 2
    assert set(with_defaults("audit")) == {"near_duplicate_jaccard", "opening_words", "top", "group_indices"}


# --- structured answers (vidcap.structured) and the accept / retry / degenerate decision (vidcap.judge) ---


def json_answer(**overrides) -> str:
    answer = {
        "summary": GOOD,
        "events": [{"start": 0, "end": 4, "text": "walks"}],
        "subjects": ["dog"],
        "camera": "follows",
    }
    return json.dumps({**answer, **overrides})


def test_a_valid_answer_parses_with_no_notes():
    answer, reason, notes = parse_answer(json_answer(), DEFAULT_SCHEMA, 10.0)
    assert reason is None and notes == [] and answer["summary"] == GOOD


def test_cut_or_shapeless_answers_are_rejected_with_the_reason():
    assert parse_answer(json_answer()[:-20], DEFAULT_SCHEMA, 10.0)[1].startswith("json: does not parse")
    _, reason, _ = parse_answer(json.dumps({"summary": "x"}), DEFAULT_SCHEMA, 10.0)
    assert reason.startswith("json: answer:") and "required" in reason


def test_event_times_are_clamped_ordered_and_overlaps_noted():
    events = [
        {"start": -1, "end": 3, "text": "a"},
        {"start": 9, "end": 2, "text": "b"},
        {"start": 5, "end": 99, "text": "c"},
    ]
    answer, reason, notes = parse_answer(json_answer(events=events), DEFAULT_SCHEMA, 8.0)
    assert reason is None
    assert [(e["start"], e["end"]) for e in answer["events"]] == [(0, 3), (2, 8), (5, 8)]
    assert notes == [
        "event 0: -1-3 s clamped to 0-3 s",
        "event 1: 9-2 s clamped to 2-8 s",
        "event 1 overlaps event 0",
        "event 2: 5-99 s clamped to 5-8 s",
        "event 2 overlaps event 1",
    ]


def test_bounds_the_grammar_let_through_are_cut_and_noted():
    answer, reason, notes = parse_answer(
        json_answer(camera="c" * 130, subjects=["s"] * 12), DEFAULT_SCHEMA, 10.0
    )
    assert reason is None and len(answer["camera"]) == 100 and len(answer["subjects"]) == 8
    assert notes == ["/subjects: 12 items cut to 8", "/camera: 130 characters cut to 100"]


def judge_for(**quality):
    settings = {
        "quality": with_defaults("quality", quality),
        "candidates": with_defaults("candidates", {"n": 2, "keep": "all"}),
        "sampling": with_defaults("sampling"),
    }
    return Judge(settings)


def test_judge_keeps_a_passing_candidate_over_a_loop():
    judge, item = judge_for(), Pending(0, "d", {"videos": [], "images": []}, "p", seed=7)
    verdict = judge.decide(item, judge.check(7, [LOOP, GOOD], ["length", "stop"], None))
    assert (verdict.status, verdict.chosen, verdict.rejected) == ("ok", 1, [])
    assert judge.fields(verdict) == {"caption": GOOD, "captions": [LOOP, GOOD]}


def test_judge_retries_with_new_seed_and_penalty_then_labels_degenerate():
    judge, item = judge_for(retries=1), Pending(0, "d", {"videos": [], "images": []}, "p", seed=7)
    first = judge.decide(item, judge.check(item.seed, [LOOP, ""], ["length", "stop"], None))
    assert first.status == "retry" and item.attempt == 1
    assert item.seed == retry_seed(7, 1) and item.presence_penalty == 0.5
    last = judge.decide(item, judge.check(item.seed, [SHORT_LOOP, ""], ["stop", "stop"], None))
    assert last.status == "degenerate"
    assert [r["seed"] for r in last.rejected] == [7, retry_seed(7, 1)]
    assert judge.fields(last)["caption"] == LOOP  # the most distinct words of all attempts
    assert judge.meta(last, item.attempt + 1)["attempts"] == 2
