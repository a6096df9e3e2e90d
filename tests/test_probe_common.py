"""What every probe shares: the registry, one pass encoding each distinct caption and image once whichever probes share
them, and failure analysis (the ranking of failures, the per-example dump and the markdown page)."""

import json

import pytest
import torch
from PIL import Image

from helpers import Rigged, one_line_error

from lit_compclip.encoders.memo import PassMemo, TransformedImages, TruncationCounts
from lit_compclip.probes import PROBES, build_probe
from lit_compclip.probes.report import failure_page, margin, worst_failures, write_records
from lit_compclip.registry import resolve

# ---- the registry ------------------------------------------------------------------------------------------------

def test_every_registered_probe_resolves_to_a_class_with_run():
    for name in PROBES:
        assert callable(getattr(resolve(PROBES, name, "probe"), "run"))


def test_build_probe_unknown_name_suggests():
    with pytest.raises(ValueError) as e:
        build_probe("sugarcrep", {})
    one_line_error(e, "'sugarcrep'", "did you mean 'sugarcrepe'")


# ---- one pass: each distinct caption and image encoded once --------------------------------------------------------

def counting() -> Rigged:
    """A deterministic encoder (a caption's vector from its length and letters, an image's from its red) that keeps
    what it is asked to encode; its text tower keeps two words (and says 7 tokens: the memo must pass that on)."""
    return Rigged(lambda colour: [float(colour[0]), 1.0, 2.0], lambda t: [len(t), sum(map(ord, t)) % 97, 1.0],
                  truncates=2, max_tokens=7)


def test_each_distinct_caption_and_image_is_encoded_once_per_pass():
    inner = counting()
    memo = PassMemo(inner)
    red, blue = Image.new("RGB", (4, 4), (200, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 200))
    first = memo.encode_text(["a red circle", "a blue square", "a red circle"])
    again = memo.encode_text(["a blue square", "shapes"])  # another probe's captions
    images = memo.encode_image([red, blue, Image.new("RGB", (4, 4), (200, 0, 0))])  # equal pixels: one image
    assert inner.seen("text") == ["a red circle", "a blue square", "shapes"] and len(inner.seen("image")) == 2
    assert torch.equal(first, inner.encode_text(["a red circle", "a blue square", "a red circle"]))
    assert torch.equal(again[0], first[1]) and torch.equal(images[0], images[2])
    assert memo.max_tokens == 7 and memo.encoded == {"texts": 3, "images": 2}


def test_truncation_counts_are_asked_once_per_caption_for_a_run():
    inner, counts = counting(), TruncationCounts()
    texts = ["short", "a much longer caption", "tiny", "another long caption"]
    assert PassMemo(inner, counts).count_truncated(texts) == 2
    calls = inner.truncation_calls
    assert PassMemo(inner, counts).count_truncated(texts[::-1] + ["short"]) == 2  # the next pass
    assert inner.truncation_calls == calls


def test_transformed_images_are_kept_within_their_budget():
    calls = []

    def transform(image):
        calls.append(image)
        return torch.zeros(3, 8, 8)  # 768 bytes

    kept = TransformedImages(budget_mb=1000 / 2 ** 20)  # room for one
    a, b = Image.new("RGB", (4, 4), (1, 2, 3)), Image.new("RGB", (4, 4), (3, 2, 1))
    for image in (a, b, a, b):
        kept.get(image, transform)
    assert len(calls) == 3 and len(kept.tensors) == 1  # a kept; b, over the budget, transformed each time


# ---- failure analysis --------------------------------------------------------------------------------------------

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
