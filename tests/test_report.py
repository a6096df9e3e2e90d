"""Failure analysis: ranking of failures, the per-example dump and the markdown page."""

import json

import pytest

from lit_compclip.probes.report import failure_page, margin, worst_failures, write_records


def rec(i, true, *rivals, correct=None):
    scores = [true, *rivals]
    return {"id": str(i), "image": f"/data/img{i}.jpg", "captions": [f"true {i}"] + [f"rival {i}.{j}" for j in
                                                                                         range(len(rivals))],
            "scores": scores, "correct": all(true > r for r in rivals) if correct is None else correct}


def test_margin_is_how_far_the_best_rival_wins():
    assert margin(rec(0, 0.2, 0.5, 0.3)) == pytest.approx(0.3)
    assert margin(rec(0, 0.4, 0.4)) == 0.0  # a tie: wrong by zero
    assert margin({"scores": [0.3], "rival_scores": [0.1, 0.6]}) == pytest.approx(0.3)  # retrieval records


def test_worst_failures_are_the_wrong_ones_by_decreasing_margin():
    rows = [rec(0, 0.9, 0.1), rec(1, 0.2, 0.3), rec(2, 0.1, 0.8), rec(3, 0.5, 0.5), rec(4, 0.4, 0.6)]
    assert [r["id"] for r in worst_failures(rows, 3)] == ["2", "4", "1"]
    assert [r["id"] for r in worst_failures(rows, 10)] == ["2", "4", "1", "3"]


def test_write_records_one_jsonl_per_subset_nothing_lost(tmp_path):
    records = {"sugarcrepe": {"swap_att": [rec(0, 0.9, 0.1), rec(1, 0.2, 0.3)], "add_obj": [rec(2, 0.5, 0.1)]},
               "winoground": {"relation/group": [rec(3, 0.1, 0.2)]}}
    paths = write_records(records, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "sugarcrepe/add_obj.jsonl", "sugarcrepe/swap_att.jsonl", "winoground/relation_group.jsonl"]
    back = [json.loads(line) for line in (tmp_path / "sugarcrepe/swap_att.jsonl").read_text().splitlines()]
    assert back == records["sugarcrepe"]["swap_att"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_failure_page_lists_accuracy_and_worst_failures_with_relative_images(tmp_path):
    (tmp_path / "data").mkdir()
    rows = [rec(0, 0.9, 0.1), {**rec(1, 0.2, 0.7), "image": str(tmp_path / "data/x.jpg")}]
    failure_page({"sugarcrepe": {"swap_att": rows, "add_obj": [rec(2, 0.5, 0.1)]}}, tmp_path / "run/failures.md", 5)
    page = (tmp_path / "run/failures.md").read_text()
    assert "## sugarcrepe / swap_att: 1/2 right (50.0%)" in page
    assert "![](../data/x.jpg)" in page and "rival 1.0" in page and "+0.5000" in page
    assert "## sugarcrepe / add_obj: 1/1 right (100.0%)" in page and "No failures." in page
