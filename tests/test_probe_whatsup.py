"""What'sUp scores a tiny copy in the official format exactly as a rigged encoder's known answers dictate: every
subset strictly beside the official argmax, pair and set scores, records and failure pages, image folders, and one-line
errors on broken files."""

import json

import pytest

from helpers import BLUE, CYAN, GREEN, GREY, PURPLE, RED, YELLOW, Rigged, nearest, one_line_error, solid, write_json

from lit_compclip.probes import build_probe
from lit_compclip.probes.report import failure_page
from lit_compclip.probes.whatsup import WhatsUp

# Controlled-A's captions for a mug and a table, and an image per placement; s(image, caption) = shared axis.
MUG = {p: f"A mug {w} a table" for p, w in
       (("left", "to the left of"), ("right", "to the right of"), ("on", "on"), ("under", "under"))}
WU_TEXTS = {MUG["left"]: [1, 0, 0, 0], MUG["right"]: [0, 1, 0, 0], MUG["on"]: [0, 0, 1, 0], MUG["under"]: [0, 0, 0, 1],
            "A photo of a dog to the left of a cat": [1, 0, 0, 0],
            "A photo of a dog to the right of a cat": [0, 1, 0, 0],
            "A photo of a cat on the left": [0, 0, 1, 0], "A photo of a cat on the right": [0, 0, 0, 1]}
WU_IMAGES = {RED: [1, 0, 0, 0], GREEN: [0, 1, 0, 0], BLUE: [0, 0, 1, 0],
             YELLOW: [0, 0.6, 0, 0.8],  # "under": under scores 0.8, right 0.6: right
             PURPLE: [1, 1, 0, 0],  # ties left and right
             CYAN: [0, 0, 0, 1], GREY: [0, 0, 1, 0]}


def controlled(name, true, *others):
    return {"image_path": f"data/controlled_images/{name}.jpeg",
            "caption_options": [MUG[true]] + [MUG[o] for o in others]}


@pytest.fixture
def whatsup(tmp_path):
    root = tmp_path / "data"
    for name, colour in (("mug_left_of_table", RED), ("mug_right_of_table", GREEN), ("mug_on_table", BLUE),
                         ("mug_under_table", YELLOW), ("mug_left_of_chair", PURPLE)):
        solid(root / "controlled_images" / f"{name}.jpeg", colour)
    write_json(root / "controlled_images_dataset.json", [
        controlled("mug_left_of_table", "left", "right", "on", "under"),  # right
        controlled("mug_right_of_table", "right", "left", "on", "under"),  # right
        controlled("mug_on_table", "on", "left", "right", "under"),  # right
        controlled("mug_under_table", "under", "left", "right", "on"),  # right
        controlled("mug_left_of_chair", "left", "right", "on", "under"),  # a tie: wrong, official right
    ])
    solid(root / "val2017" / "000000000042.jpg", RED)
    solid(root / "val2017" / "000000000043.jpg", GREEN)
    write_json(root / "coco_qa_two_obj.json", [
        [42, "A photo of a dog to the left of a cat", "A photo of a dog to the right of a cat"],  # right
        [43, "A photo of a dog to the left of a cat", "A photo of a dog to the right of a cat"],  # wrong
    ])
    solid(root / "val2017" / "000000000044.jpg", CYAN)
    write_json(root / "coco_qa_one_obj.json", [[44, "A photo of a cat on the right", "A photo of a cat on the left"]])
    solid(root / "vg_images" / "2345.jpg", GREY)
    write_json(root / "vg_qa_one_obj.json", [["2345", "A photo of a cat on the left", "A photo of a cat on the right"]])
    return root


def wu_encoder():
    # the palette colour nearest each image's top-left pixel: the files are JPEGs, as the official ones
    return Rigged(WU_IMAGES, WU_TEXTS, key=nearest(WU_IMAGES))


def test_whatsup_scores_every_subset_strictly_beside_the_official_argmax(whatsup):
    out = WhatsUp(str(whatsup)).run(wu_encoder())
    assert out == pytest.approx({
        "controlled_a": 0.8, "controlled_a_official": 1.0, "controlled_a_pair": 1.0, "controlled_a_set": 1.0,
        "coco_qa_one": 1.0, "coco_qa_one_official": 1.0, "coco_qa_two": 0.5, "coco_qa_two_official": 0.5,
        "vg_qa_one": 1.0, "vg_qa_one_official": 1.0,
        "coco_qa": 0.75,  # both COCO-QA files; no vg_qa: its two-object file is absent
        "mean": (0.8 + 1 + 0.5 + 1) / 4, "ties": 1.0, "n": 9.0})


def test_whatsup_first_option_is_the_true_one(whatsup):
    data = json.loads((whatsup / "controlled_images_dataset.json").read_text())
    data[0]["caption_options"] = data[0]["caption_options"][::-1]  # 'under' now stands first: the true one
    write_json(whatsup / "controlled_images_dataset.json", data)
    records: dict = {}
    out = WhatsUp(str(whatsup), subsets=["controlled_a"]).run(wu_encoder(), records=records)
    assert records["controlled_a"][0]["captions"][0] == MUG["under"] and not records["controlled_a"][0]["correct"]
    assert out["controlled_a"] == pytest.approx(3 / 5) and out["controlled_a_pair"] == 0.5  # left-right lost
    assert out["controlled_a_set"] == 0.0


def test_whatsup_pair_and_set_count_only_complete_object_pairs(whatsup):
    out = WhatsUp(str(whatsup), subsets=["controlled_a"], limit=3).run(wu_encoder())
    assert out["n"] == 3.0 and "controlled_a_pair" not in out and "controlled_a_set" not in out


def test_whatsup_records_carry_the_official_labels_and_make_failure_pages(whatsup, tmp_path):
    records: dict = {}
    WhatsUp(str(whatsup)).run(wu_encoder(), records=records)
    tie = records["controlled_a"][4]
    assert tie["tied"] and not tie["correct"] and tie["official"] and tie["objects"] == "mug|chair"
    assert [r["preposition"] for r in records["controlled_a"]] == ["left", "right", "on", "under", "left"]
    assert [r["preposition"] for r in records["coco_qa_two"]] == ["left", "left"]
    assert records["coco_qa_one"][0]["preposition"] == "right" and records["vg_qa_one"][0]["preposition"] == "left"
    assert records["coco_qa_two"][1]["image"].endswith("val2017/000000000043.jpg")
    failure_page({"whatsup": records}, tmp_path / "failures.md")
    page = (tmp_path / "failures.md").read_text()
    assert "## whatsup / coco_qa_two: 1/2 right (50.0%)" in page and "+1.0000" in page
    assert "## whatsup / controlled_a: 4/5 right (80.0%)" in page and "+0.0000" in page  # the tie


def test_whatsup_encodes_repeated_image_bytes_and_captions_once(whatsup):
    (whatsup / "val2017" / "000000000043.jpg").write_bytes((whatsup / "controlled_images" /
                                                             "mug_left_of_table.jpeg").read_bytes())
    enc = wu_encoder()
    out = WhatsUp(str(whatsup), subsets=["controlled_a", "coco_qa_two"]).run(enc)
    assert sorted(enc.seen("image")) == sorted([RED, GREEN, BLUE, YELLOW, PURPLE])  # 43's bytes are the first image's
    assert len(enc.seen("text")) == len(set(enc.seen("text"))) == 6
    assert out["coco_qa_two"] == 1.0


def test_whatsup_image_folder_options_replace_the_official_ones(whatsup, tmp_path):
    (whatsup / "val2017").rename(tmp_path / "coco")
    with pytest.raises(FileNotFoundError) as e:
        WhatsUp(str(whatsup), subsets=["coco_qa_two"])
    one_line_error(e, "000000000042.jpg", "coco_qa_two_obj.json record 0")
    out = WhatsUp(str(whatsup), subsets=["coco_qa_two"], coco_images=str(tmp_path / "coco")).run(wu_encoder())
    assert out["coco_qa_two"] == 0.5
    with pytest.raises(FileNotFoundError) as e:
        WhatsUp(str(whatsup), vg_images=str(tmp_path / "no_vg"))
    one_line_error(e, "'vg_images'", "no_vg")


@pytest.mark.parametrize("file, data, parts", [
    ("controlled_images_dataset.json", [{"image_path": "data/controlled_images/mug_atop_table.jpeg",
                                         "caption_options": ["a", "b"]}], ["record 0", "mug_atop_table.jpeg'", "left"]),
    ("controlled_images_dataset.json", [{"image_path": "data/controlled_images/mug_on_table.jpeg",
                                         "caption_options": "A mug on a table"}], ["record 0", "'caption_options'"]),
    ("controlled_images_dataset.json", [{"image_path": "data/controlled_images/mug_on_table.jpeg",
                                         "caption_options": ["only one"]}], ["record 0", "2 or more strings"]),
    ("controlled_images_dataset.json", [{"caption_options": ["a", "b"]}], ["record 0", "'image_path'"]),
    ("coco_qa_two_obj.json", [[42, "only a true caption"]], ["coco_qa_two_obj.json record 0", "[image id"]),
    ("coco_qa_two_obj.json", [{"image_id": 42}], ["record 0", "[image id"]),
    ("vg_qa_one_obj.json", [], ["vg_qa_one_obj.json", "non-empty JSON list"]),
])
def test_whatsup_bad_records_are_one_line_errors(whatsup, file, data, parts):
    write_json(whatsup / file, data)
    with pytest.raises(ValueError) as e:
        WhatsUp(str(whatsup))
    one_line_error(e, *parts)


def test_whatsup_root_without_files_or_unknown_subset_is_a_one_line_error(whatsup, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        WhatsUp(str(tmp_path / "empty"))
    one_line_error(e, "'root'", "controlled_images_dataset.json")
    with pytest.raises(ValueError) as e:
        WhatsUp(str(whatsup), subsets=["controlled_c"])
    one_line_error(e, "'controlled_c'", "did you mean")
    with pytest.raises(FileNotFoundError) as e:
        WhatsUp(str(whatsup), subsets=["vg_qa_two"])
    one_line_error(e, "vg_qa_two_obj.json")


def test_whatsup_builds_by_name(whatsup):
    assert build_probe("whatsup", {"root": str(whatsup), "subsets": ["vg_qa_one"]}).run(wu_encoder())["n"] == 1.0
