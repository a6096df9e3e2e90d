"""SugarCrepe scores a tiny copy in the official format exactly as a rigged encoder's known answers dictate: the
subsets, ties, limits, records, building by name, and one-line errors on broken files."""

import json

import pytest

from helpers import BLUE, RED, Rigged, one_line_error, solid, write_json

from lit_compclip.probes import build_probe
from lit_compclip.probes.sugarcrepe import SugarCrepe

SUGAR_TEXTS = {"red cube": [1, 0], "blue cube": [0, 1], "crimson cube": [1, 0], "red cube and ball": [0.6, 0.8]}


@pytest.fixture
def sugar(tmp_path):
    solid(tmp_path / "img" / "red.png", RED)
    solid(tmp_path / "img" / "blue.png", BLUE, mode="RGBA")  # the probe must hand the encoder RGB
    rec = lambda f, c, n: {"filename": f, "caption": c, "negative_caption": n}  # noqa: E731
    write_json(tmp_path / "ann" / "swap_att.json", {  # non-contiguous keys, one exact tie
        "0": rec("red.png", "red cube", "blue cube"),  # right
        "7": rec("blue.png", "red cube", "blue cube"),  # wrong
        "12": rec("red.png", "red cube", "crimson cube"),  # exact tie: wrong
    })
    write_json(tmp_path / "ann" / "add_obj.json", {
        "3": rec("blue.png", "blue cube", "red cube"),  # right
        "40": rec("blue.png", "blue cube", "red cube and ball"),  # right (1 > 0.8)
    })
    return tmp_path


def sugar_encoder():
    return Rigged({RED: [1, 0], BLUE: [0, 1]}, SUGAR_TEXTS)


def test_sugarcrepe_scores_each_subset_and_counts_the_tie_as_wrong(sugar):
    out = SugarCrepe(str(sugar / "ann"), str(sugar / "img")).run(sugar_encoder())
    assert out == {"add_obj": 1.0, "swap_att": pytest.approx(1 / 3), "mean": pytest.approx(2 / 3),
                   "ties": 1.0, "n": 5.0}
    assert all(type(v) is float for v in out.values())


def test_sugarcrepe_encodes_each_distinct_image_and_caption_once_in_small_batches(sugar):
    enc = sugar_encoder()
    SugarCrepe(str(sugar / "ann"), str(sugar / "img"), batch_size=3).run(enc)
    assert sorted(enc.seen("image")) == sorted([RED, BLUE])
    assert sorted(enc.seen("text")) == sorted(SUGAR_TEXTS)
    assert max(len(b) for b in enc.image_batches + enc.text_batches) <= 3
    assert len(enc.text_batches) == 2


def test_sugarcrepe_limit_keeps_the_first_keys_in_numeric_order(sugar):
    out = SugarCrepe(str(sugar / "ann"), str(sugar / "img"), subsets=["swap_att"], limit=2).run(sugar_encoder())
    assert out == {"swap_att": 0.5, "mean": 0.5, "ties": 0.0, "n": 2.0}  # keys "0" and "7", not "12"


def test_sugarcrepe_missing_subset_file_names_it(sugar):
    with pytest.raises(FileNotFoundError) as e:
        SugarCrepe(str(sugar / "ann"), str(sugar / "img"), subsets=["swap_att", "replace_rel"])
    one_line_error(e, "replace_rel.json", "annotations")


def test_sugarcrepe_unknown_subset_suggests_the_right_name(sugar):
    with pytest.raises(ValueError) as e:
        SugarCrepe(str(sugar / "ann"), str(sugar / "img"), subsets=["swap_atts"])
    one_line_error(e, "'swap_atts'", "did you mean 'swap_att'")


def test_sugarcrepe_missing_field_names_file_record_and_field(sugar):
    data = json.loads((sugar / "ann" / "swap_att.json").read_text())
    del data["7"]["negative_caption"]
    write_json(sugar / "ann" / "swap_att.json", data)
    with pytest.raises(ValueError) as e:
        SugarCrepe(str(sugar / "ann"), str(sugar / "img"))
    one_line_error(e, "swap_att.json", "record '7'", "'negative_caption'")


def test_sugarcrepe_missing_annotation_dir_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        SugarCrepe(str(tmp_path / "nope"), str(tmp_path))
    one_line_error(e, "'annotations'", "nope")


def test_missing_image_fails_at_construction_naming_image_and_record(sugar):
    (sugar / "img" / "blue.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        SugarCrepe(str(sugar / "ann"), str(sugar / "img"))
    one_line_error(e, "blue.png", "record '")


def test_unreadable_image_names_file_and_record(sugar):
    (sugar / "img" / "blue.png").write_bytes(b"not an image")
    probe = SugarCrepe(str(sugar / "ann"), str(sugar / "img"), subsets=["add_obj"])
    with pytest.raises(ValueError) as e:
        probe.run(sugar_encoder())
    one_line_error(e, "blue.png", "add_obj.json record '3'", "cannot be read")


def test_build_probe_builds_and_runs_by_name(sugar):
    probe = build_probe("sugarcrepe", {"annotations": str(sugar / "ann"), "images": str(sugar / "img")})
    assert probe.run(sugar_encoder())["n"] == 5.0


def test_build_probe_unknown_option_names_it(sugar):
    with pytest.raises(ValueError) as e:
        build_probe("sugarcrepe", {"annotations": str(sugar / "ann"), "images": str(sugar / "img"), "batchsize": 8})
    one_line_error(e, "'batchsize'", "did you mean 'batch_size'")


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"limit": 0}])
def test_bad_batch_size_or_limit_is_rejected(sugar, options):
    with pytest.raises(ValueError) as e:
        SugarCrepe(str(sugar / "ann"), str(sugar / "img"), **options)
    one_line_error(e, repr(next(iter(options))))


# ---- per-example records (failure analysis) ----------------------------------------------------------------------

def test_sugarcrepe_records_carry_keys_both_scores_and_the_strict_verdict(sugar):
    records = {}
    out = SugarCrepe(str(sugar / "ann"), str(sugar / "img")).run(sugar_encoder(), records=records)
    assert out["swap_att"] == pytest.approx(1 / 3)  # records change nothing
    swap = records["swap_att"]
    assert [r["id"] for r in swap] == ["0", "7", "12"]
    assert [r["correct"] for r in swap] == [True, False, False]  # the tie (key 12) is wrong
    assert swap[2]["scores"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert swap[1]["captions"] == ["red cube", "blue cube"] and swap[1]["image"].endswith("blue.png")
    assert [r["id"] for r in records["add_obj"]] == ["3", "40"]
    json.dumps(records)  # JSON-serialisable as dumped
