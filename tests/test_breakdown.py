"""compclip breakdown: probe records split by shape pair, by caption form and by relation phrasing."""

import json

from lit_compclip.cli import main
from lit_compclip.synth.breakdown import accuracy_by, breakdown, caption_form, phrasing, shape_pair


def test_shape_pair_is_what_tells_the_captions_apart():
    assert shape_pair(["a red diamond and a blue triangle", "a red triangle and a blue diamond"]) == "diamond-triangle"
    assert shape_pair(["a white diamond over a red circle", "a white square over a red circle"]) == "diamond-square"


def test_caption_form_tells_a_plain_list_from_a_relation():
    assert caption_form("a red diamond and a blue triangle") == "list"
    assert caption_form("a large red circle and a small blue square") == "list"  # swap-attribute's sized lists
    for relation in ("on the left of", "on the right of", "over", "beneath"):
        assert caption_form(f"a green cross {relation} a blue square") == "relation"


def test_phrasing_reads_the_relation_words_of_an_aro_caption():
    assert phrasing("the blue circle is on the left of the yellow diamond") == "on the left of"
    assert phrasing("the blue circle is over the yellow diamond") == "over"
    assert phrasing("a caption of another form") == "?"


def test_breakdown_of_a_runs_records_and_the_command(tmp_path, capsys):
    folder = tmp_path / "run" / "probe_records"
    (folder / "aro").mkdir(parents=True)
    rows = [("on the left of", True), ("on the left of", True), ("on the right of", False), ("over", True)]
    (folder / "aro" / "vg_relation.jsonl").write_text("".join(
        json.dumps({"captions": [f"the red star is {p} the blue cross", f"the blue cross is {p} the red star"],
                    "correct": ok}) + "\n" for p, ok in rows))
    assert breakdown(tmp_path / "run") == {"aro/vg_relation": {"on the left of": (1.0, 2), "on the right of": (0.0, 1),
                                                              "over": (1.0, 1)}}
    assert accuracy_by([{"correct": True}, {"correct": False}], lambda r: "all") == {"all": (0.5, 2)}
    assert main(["breakdown", str(tmp_path / "run")]) == 0
    assert "on the left of 100% (2), on the right of 0% (1), over 100% (1)" in capsys.readouterr().out
    (folder / "sugarcrepe").mkdir()
    swaps = [("a red star and a blue cross", True), ("a red star and a blue cross", False),
             ("a red star over a blue cross", True)]
    (folder / "sugarcrepe" / "swap_obj.jsonl").write_text("".join(
        json.dumps({"captions": [c, c.replace("star", "x").replace("cross", "star").replace("x", "cross")],
                    "correct": ok}) + "\n" for c, ok in swaps))
    tables = breakdown(tmp_path / "run")
    assert tables["sugarcrepe/swap_obj by caption form"] == {"list": (0.5, 2), "relation": (1.0, 1)}
    assert tables["sugarcrepe/swap_obj"] == {"cross-star": (2 / 3, 3)}
    assert "swap_att" not in " ".join(tables)  # a subset without records is left out, not shown empty
    (tmp_path / "empty").mkdir()
    assert main(["breakdown", str(tmp_path / "empty")]) == 2
    assert "no probe records" in capsys.readouterr().err

