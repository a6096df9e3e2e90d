"""SugarCrepe++ scores a tiny copy in the official format exactly as a rigged encoder's known answers dictate: ITT and
TOT with the two-positive rule, ties wrong, limits, records and failure pages, and one-line errors on broken files."""

import json

import pytest

from helpers import RED, Rigged, one_line_error, solid, write_json

from lit_compclip.probes import build_probe
from lit_compclip.probes.report import failure_page, write_records
from lit_compclip.probes.sugarcrepe_pp import SugarCrepePP

# One image (RED = e1). Texts chosen so each record's verdicts are known: s(image, t) = t[0].
PP_TEXTS = {"red ball": [1, 0, 0], "a ball in red": [0.8, 0.6, 0], "blue ball": [0, 1, 0],
            "scarlet ball": [0.6, 0, 0.8], "red or blue ball": [0.7, 0.51 ** 0.5, 0], "red-ish ball": [0.8, 0, 0.6]}


def pp_record(i, caption, caption2, negative, filename="red.png"):
    return {"id": i, "filename": filename, "caption": caption, "caption2": caption2, "negative_caption": negative}


@pytest.fixture
def scpp(tmp_path):
    solid(tmp_path / "img" / "red.png", RED)
    write_json(tmp_path / "ann" / "swap_att.json", [
        # ITT: 1 and 0.8 beat 0: right. TOT: s12 0.8 beats s1n 0 and s2n 0.6: right
        pp_record(0, "red ball", "a ball in red", "blue ball"),
        # ITT: caption 1 beats 0.7, caption2 0.6 does not: wrong. TOT: s12 0.6 < s1n 0.7: wrong
        pp_record(1, "red ball", "scarlet ball", "red or blue ball"),
        # ITT: the negative is the caption itself: 0.8 ties 0.8: wrong, tied. TOT: s12 0.8 < s1n 1: wrong
        pp_record(2, "red-ish ball", "red ball", "red-ish ball"),
    ])
    write_json(tmp_path / "ann" / "replace_rel.json", [
        # ITT: 0.8 and 0.8 beat 0: right. TOT: s12 0.64 beats s1n 0 and s2n 0.6: right
        pp_record(7, "red-ish ball", "a ball in red", "blue ball"),
    ])
    return tmp_path


def pp_encoder():
    return Rigged({RED: [1, 0, 0]}, PP_TEXTS)


def test_sugarcrepe_pp_scores_itt_and_tot_with_the_two_positive_rule_and_ties_wrong(scpp):
    out = SugarCrepePP(str(scpp / "ann"), str(scpp / "img")).run(pp_encoder())
    assert out == {"replace_rel_itt": 1.0, "replace_rel_tot": 1.0, "swap_att_itt": pytest.approx(1 / 3),
                   "swap_att_tot": pytest.approx(1 / 3), "itt_mean": pytest.approx(2 / 3),
                   "tot_mean": pytest.approx(2 / 3), "ties": 1.0, "n": 4.0}
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize("rule, texts", [
    # ITT: the image (e1) prefers caption (1) to the negative (0.6), not caption2 (0); then the other way round
    ("itt", {"c1": [1, 0], "c2": [0, 1], "neg": [0.6, 0.8]}),
    ("itt", {"c1": [0, 1], "c2": [1, 0], "neg": [0.6, 0.8]}),
    # TOT: caption ~ caption2 (0.6) beats caption ~ negative (0.28) but not caption2 ~ negative (0.936); then the mirror
    ("tot", {"c1": [1, 0], "c2": [0.6, 0.8], "neg": [0.28, 0.96]}),
    ("tot", {"c1": [0.6, 0.8], "c2": [1, 0], "neg": [0.28, 0.96]}),
])
def test_sugarcrepe_pp_fails_when_only_one_positive_wins(tmp_path, rule, texts):
    solid(tmp_path / "img" / "red.png", RED)
    write_json(tmp_path / "ann" / "swap_obj.json", [pp_record(0, "c1", "c2", "neg")])
    out = SugarCrepePP(str(tmp_path / "ann"), str(tmp_path / "img")).run(Rigged({RED: [1, 0]}, texts))
    assert out[f"swap_obj_{rule}"] == 0.0 and out["ties"] == 0.0


def test_sugarcrepe_pp_encodes_each_image_and_caption_once_and_limit_keeps_the_first_records(scpp):
    enc = pp_encoder()
    SugarCrepePP(str(scpp / "ann"), str(scpp / "img"), batch_size=2).run(enc)
    assert enc.seen("image") == [RED] and sorted(enc.seen("text")) == sorted(PP_TEXTS)
    assert max(len(b) for b in enc.text_batches) <= 2
    out = SugarCrepePP(str(scpp / "ann"), str(scpp / "img"), subsets=["swap_att"], limit=1).run(pp_encoder())
    assert out["n"] == 1.0 and out["swap_att_itt"] == 1.0


def test_sugarcrepe_pp_records_put_the_deciding_comparison_first_and_make_failure_pages(scpp, tmp_path):
    records: dict = {}
    SugarCrepePP(str(scpp / "ann"), str(scpp / "img")).run(pp_encoder(), records=records)
    assert sorted(records) == ["replace_rel_itt", "replace_rel_tot", "swap_att_itt", "swap_att_tot"]
    itt, tot = records["swap_att_itt"], records["swap_att_tot"]
    assert [r["id"] for r in itt] == ["0", "1", "2"] and [r["correct"] for r in itt] == [True, False, False]
    assert itt[1]["captions"] == ["scarlet ball", "red or blue ball"]  # the weaker positive, then the negative
    assert itt[1]["scores"] == pytest.approx([0.6, 0.7]) and itt[1]["image_scores"] == pytest.approx([1, 0.6, 0.7])
    assert itt[2]["tied"] and not itt[2]["correct"] and itt[2]["scores"][0] == itt[2]["scores"][1]
    assert itt[0]["all_captions"] == ["red ball", "a ball in red", "blue ball"]
    assert tot[0]["captions"] == ["a ball in red", "blue ball"] and tot[0]["correct"]
    assert tot[1]["scores"][1] == pytest.approx(max(tot[1]["text_scores"][1:]))
    write_records({"sugarcrepe_pp": records}, tmp_path / "dump")
    assert (tmp_path / "dump" / "sugarcrepe_pp" / "swap_att_tot.jsonl").read_text().count("\n") == 3
    failure_page({"sugarcrepe_pp": records}, tmp_path / "run" / "failures.md")
    page = (tmp_path / "run" / "failures.md").read_text()
    assert "## sugarcrepe_pp / swap_att_itt: 1/3 right (33.3%)" in page and "red or blue ball" in page
    assert "+0.1000" in page  # record 1: the negative beats the weaker positive by 0.7 - 0.6


def test_sugarcrepe_pp_bad_files_and_fields_are_one_line_errors(scpp):
    ann, img = str(scpp / "ann"), str(scpp / "img")
    data = json.loads((scpp / "ann" / "swap_att.json").read_text())
    del data[1]["caption2"]
    write_json(scpp / "ann" / "swap_att.json", data)
    with pytest.raises(ValueError) as e:
        SugarCrepePP(ann, img)
    one_line_error(e, "swap_att.json", "record 1", "'caption2'")
    write_json(scpp / "ann" / "swap_att.json", {"0": data[0]})  # SugarCrepe's layout, not SugarCrepe++'s
    with pytest.raises(ValueError) as e:
        SugarCrepePP(ann, img)
    one_line_error(e, "swap_att.json", "JSON list")
    write_json(scpp / "ann" / "swap_att.json", [pp_record(0, "a", "b", "c", filename="gone.png")])
    with pytest.raises(FileNotFoundError) as e:
        SugarCrepePP(ann, img)
    one_line_error(e, "gone.png", "record 0")
    with pytest.raises(ValueError) as e:
        SugarCrepePP(ann, img, subsets=["add_att"])  # SugarCrepe has it, SugarCrepe++ does not
    one_line_error(e, "'add_att'", "replace_att")
    with pytest.raises(FileNotFoundError) as e:
        SugarCrepePP(str(scpp / "nope"), img)
    one_line_error(e, "'annotations'", "nope")


def test_sugarcrepe_pp_built_by_name_rejects_an_unknown_option(scpp):
    with pytest.raises(ValueError, match="images"):
        build_probe("sugarcrepe_pp", {"annotations": str(scpp / "ann"), "imagez": "x"})
