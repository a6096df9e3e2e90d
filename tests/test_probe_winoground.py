"""Winoground scores a tiny copy in the official format exactly as a rigged encoder's known answers dictate: text,
image and group scores overall and per collapsed tag, the 2x2 records, and one-line errors on broken files."""

import json

import pytest

from helpers import BLUE, GREEN, RED, YELLOW, Rigged, one_line_error, solid, write_jsonl

from lit_compclip.probes.winoground import Winoground

E1, E2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]


def wino_line(i, c0, c1, tag):
    return {"id": i, "caption_0": c0, "caption_1": c1, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1",
            "tag": "x", "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": tag}


@pytest.fixture
def wino(tmp_path):
    for name, colour in [("ex_0_img_0", RED), ("ex_0_img_1", BLUE), ("ex_1_img_0", GREEN),
                         ("ex_1_img_1", YELLOW), ("ex_2_img_0", RED), ("ex_2_img_1", BLUE)]:
        solid(tmp_path / "images" / f"{name}.png", colour)
    write_jsonl(tmp_path / "examples.jsonl", [
        wino_line(0, "red over blue", "blue over red", "Object"),  # all right
        wino_line(1, "c0 ex1", "c1 ex1", "Relation"),  # text right, image wrong
        wino_line(2, "red thing", "also red", "Both"),  # captions tie on image 0
    ])
    return tmp_path


def wino_encoder():
    images = {RED: E1, BLUE: E2, GREEN: E1, YELLOW: E2}
    # ex 1: s(c0,i0)=.5 s(c0,i1)=.6 s(c1,i0)=.1 s(c1,i1)=.9 -> text right; caption 0 prefers image 1 -> image wrong
    texts = {"red over blue": E1, "blue over red": E2, "c0 ex1": [0.5, 0.6, 0.39 ** 0.5],
             "c1 ex1": [0.1, 0.9, 0.18 ** 0.5], "red thing": E1, "also red": E1}
    return Rigged(images, texts)


def test_winoground_scores_overall_and_per_collapsed_tag(wino):
    enc = wino_encoder()
    out = Winoground(str(wino / "examples.jsonl"), str(wino / "images"), batch_size=4).run(enc)
    assert out == pytest.approx({
        "text": 2 / 3, "image": 1 / 3, "group": 1 / 3,
        "object/text": 1.0, "object/image": 1.0, "object/group": 1.0,
        "relation/text": 1.0, "relation/image": 0.0, "relation/group": 0.0,
        "both/text": 0.0, "both/image": 0.0, "both/group": 0.0,
        "ties": 1.0, "n": 3.0})
    assert len(enc.seen("image")) == 6 and len(enc.seen("text")) == 6
    assert max(len(b) for b in enc.image_batches + enc.text_batches) <= 4


def test_winoground_missing_tag_names_the_line(wino):
    lines = (wino / "examples.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["collapsed_tag"]
    lines[1] = json.dumps(record)
    (wino / "examples.jsonl").write_text("\n".join(lines))
    with pytest.raises(ValueError) as e:
        Winoground(str(wino / "examples.jsonl"), str(wino / "images"))
    one_line_error(e, "examples.jsonl line 2", "'collapsed_tag'")


def test_winoground_records_hold_the_two_by_two_scores_and_each_verdict(wino):
    records = {}
    Winoground(str(wino / "examples.jsonl"), str(wino / "images")).run(wino_encoder(), records=records)
    rows = records["group"]
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert [(r["text"], r["image_score"], r["correct"]) for r in rows] == [
        (True, True, True), (True, False, False), (False, False, False)]
    assert rows[1]["matrix"] == [[pytest.approx(0.5), pytest.approx(0.6)], [pytest.approx(0.1), pytest.approx(0.9)]]
    assert rows[1]["group_tag"] == "relation" and rows[1]["images"][1].endswith("ex_1_img_1.png")
