"""Probes score tiny official-format benchmark copies exactly as a rigged encoder's known answers dictate."""

import json

import pytest
import torch
from PIL import Image

from helpers import one_line_error, write_json, write_jsonl

from lit_compclip.probes import PROBES, build_probe
from lit_compclip.probes.aro import ARO
from lit_compclip.probes.retrieval import Retrieval
from lit_compclip.probes.sugarcrepe import SugarCrepe
from lit_compclip.probes.winoground import Winoground
from lit_compclip.registry import resolve

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
E1, E2, E3 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]


class Rigged:
    """Fake encoder: each image (keyed by its top-left colour, or `key`) and caption maps to a chosen vector."""

    def __init__(self, images: dict, texts: dict, key=lambda im: im.getpixel((0, 0))):
        unit = lambda v: torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float32), dim=0)  # noqa: E731
        self.images = {k: unit(v) for k, v in images.items()}
        self.texts = {k: unit(v) for k, v in texts.items()}
        self.key = key
        self.image_batches: list[list] = []  # the keys of each encode_image call
        self.text_batches: list[list] = []

    def encode_image(self, images):
        assert all(im.mode == "RGB" for im in images)
        keys = [self.key(im) for im in images]
        self.image_batches.append(keys)
        return torch.stack([self.images[k] for k in keys])

    def encode_text(self, texts):
        self.text_batches.append(list(texts))
        return torch.stack([self.texts[t] for t in texts])

    def seen(self, kind):
        return [x for batch in getattr(self, f"{kind}_batches") for x in batch]


def solid(path, colour, size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


# ---- SugarCrepe --------------------------------------------------------------------------------------------------

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


# ---- ARO ---------------------------------------------------------------------------------------------------------

def aro_record(box, true, false, **extra):
    x, y, w, h = box
    return {"image_id": "1", "image_path": "scene.png", "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "true_caption": true, "false_caption": false, **extra}


BLUE_BOX, RED_BOX = (25, 5, 10, 20), (0, 0, 20, 10)  # right half blue (10x20 crop), left half red (20x10)


@pytest.fixture
def aro(tmp_path):
    scene = Image.new("RGB", (40, 30), RED)
    scene.paste(BLUE, (20, 0, 40, 30))
    (tmp_path / "img").mkdir()
    scene.save(tmp_path / "img" / "scene.png")
    write_json(tmp_path / "visual_genome_relation.json", [
        aro_record(BLUE_BOX, "B true", "B false", relation_name="on"),  # right
        aro_record(RED_BOX, "R true", "R false", relation_name="on"),  # right
        aro_record(RED_BOX, "R bad", "R false", relation_name="on"),  # wrong
        aro_record(BLUE_BOX, "B true", "B same", relation_name="under"),  # exact tie: wrong
    ])
    write_json(tmp_path / "visual_genome_attribution.json", [
        aro_record(RED_BOX, "R true", "R false", attributes=["red", "blue"]),  # right
        aro_record(RED_BOX, "R false", "R true", attributes=["blue", "red"]),  # wrong
        aro_record(BLUE_BOX, "B true", "B false", attributes=["red", "blue"]),  # right
    ])
    return tmp_path


def aro_encoder():
    # Keyed by crop size AND colour: an uncropped 40x30 image has no vector, so a missing crop fails loudly.
    images = {((10, 20), BLUE): [0, 1], ((20, 10), RED): [1, 0]}
    texts = {"B true": [0, 1], "B false": [1, 0], "B same": [0, 1],
             "R true": [1, 0], "R false": [0, 1], "R bad": [-1, 0]}
    return Rigged(images, texts, key=lambda im: (im.size, im.getpixel((0, 0))))


def test_aro_crops_to_the_box_and_scores_micro_and_macro(aro):
    enc = aro_encoder()
    out = ARO(str(aro), str(aro / "img")).run(enc)
    assert out == {"vg_relation": 0.5, "vg_relation_macro": pytest.approx((2 / 3 + 0) / 2),
                   "vg_attribution": pytest.approx(2 / 3), "vg_attribution_macro": 0.5, "ties": 1.0, "n": 7.0}
    assert len(enc.seen("image")) == 2  # two distinct crops, shared across both subsets


def test_aro_macro_hooks_exclude_relations_and_min_cases(aro):
    out = ARO(str(aro), str(aro / "img"), subsets=["vg_relation"], exclude_relations=["under"]).run(aro_encoder())
    assert out["vg_relation"] == 0.5  # micro keeps every record
    assert out["vg_relation_macro"] == pytest.approx(2 / 3)
    out = ARO(str(aro), str(aro / "img"), min_cases=2).run(aro_encoder())
    assert out["vg_relation_macro"] == pytest.approx(2 / 3)  # "under" has one case
    assert out["vg_attribution_macro"] == 1.0  # only ("red", "blue") has two


def test_aro_floor_that_drops_every_group_fails_at_construction(aro):
    with pytest.raises(ValueError) as e:
        ARO(str(aro), str(aro / "img"), min_cases=25)
    one_line_error(e, "visual_genome_relation.json", "min_cases=25")


def test_aro_missing_bbox_field_names_the_record(aro):
    records = json.loads((aro / "visual_genome_attribution.json").read_text())
    del records[2]["bbox_w"]
    write_json(aro / "visual_genome_attribution.json", records)
    with pytest.raises(ValueError) as e:
        ARO(str(aro), str(aro / "img"))
    one_line_error(e, "visual_genome_attribution.json record 2", "'bbox_w'")


def test_aro_attributes_must_be_two_strings(aro):
    records = json.loads((aro / "visual_genome_attribution.json").read_text())
    records[0]["attributes"] = ["red"]
    write_json(aro / "visual_genome_attribution.json", records)
    with pytest.raises(ValueError) as e:
        ARO(str(aro), str(aro / "img"))
    one_line_error(e, "record 0", "two strings")


def test_aro_scores_only_the_subsets_present(aro):
    (aro / "visual_genome_attribution.json").unlink()
    out = ARO(str(aro), str(aro / "img")).run(aro_encoder())
    assert set(out) == {"vg_relation", "vg_relation_macro", "ties", "n"}


def test_aro_root_without_annotations_names_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        ARO(str(tmp_path), str(tmp_path))
    one_line_error(e, "'root'", "visual_genome_relation.json")


# ---- Winoground --------------------------------------------------------------------------------------------------

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


# ---- Retrieval ---------------------------------------------------------------------------------------------------

class Truncating(Rigged):
    """Rigged encoder whose text tower keeps at most three words."""

    def count_truncated(self, texts):
        return sum(len(t.split()) > 3 for t in texts)


@pytest.fixture
def docci(tmp_path):
    for name, colour in [("train_1.png", RED), ("test_1.png", RED), ("test_2.png", GREEN), ("test_3.png", BLUE)]:
        solid(tmp_path / "images" / name, colour)
    write_jsonl(tmp_path / "docci_descriptions.jsonlines", [
        {"example_id": "train_1", "split": "train", "image_file": "train_1.png", "description": "a red card"},
        {"example_id": "test_1", "split": "test", "image_file": "test_1.png", "description": "a red card"},
        {"example_id": "test_2", "split": "test", "image_file": "test_2.png",
         "description": "a long green card on a table"},
        {"example_id": "test_3", "split": "test", "image_file": "test_3.png", "description": "blue card"},
    ])
    return tmp_path


def test_docci_retrieval_keeps_the_test_split_and_breaks_ties_against_the_answer(docci):
    enc = Truncating({RED: E1, GREEN: E2, BLUE: E3},
                     {"a red card": E1, "a long green card on a table": E1, "blue card": E3})
    out = Retrieval(str(docci / "docci_descriptions.jsonlines"), str(docci / "images"), format="docci").run(enc)
    # t2i: green text ranks red image first, its own ties blue -> rank 3. i2t: red image ties red/green texts.
    assert out == pytest.approx({"t2i_r1": 2 / 3, "t2i_r5": 1.0, "t2i_r10": 1.0,
                                 "i2t_r1": 1 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0,
                                 "n_images": 3.0, "n_texts": 3.0, "truncated_fraction": 1 / 3})
    train = Retrieval(str(docci / "docci_descriptions.jsonlines"), str(docci / "images"), format="docci",
                      split="train").run(enc)
    assert train["n_images"] == 1.0 and "truncated_fraction" in train


def test_docci_unknown_split_lists_the_splits_present(docci):
    with pytest.raises(ValueError) as e:
        Retrieval(str(docci / "docci_descriptions.jsonlines"), str(docci / "images"), format="docci", split="tset")
    one_line_error(e, "docci_descriptions.jsonlines", "'tset'", "['test', 'train']")


def test_karpathy_retrieval_image_hits_if_any_caption_is_in_top_k(tmp_path):
    for name, colour in [("a.png", RED), ("b.png", BLUE), ("c.png", GREEN)]:
        solid(tmp_path / "val" / name, colour)
    write_json(tmp_path / "test.json", [
        {"image": "a.png", "caption": ["red one", "ruby one"]},  # only the second caption is right
        {"image": "b.png", "caption": ["blue one"]},
        {"image": "c.png", "caption": ["green one", "emerald one"]},
    ])
    enc = Rigged({RED: E1, BLUE: E2, GREEN: E3},
                 {"red one": E2, "ruby one": E1, "blue one": E2, "green one": E3, "emerald one": E2})
    out = Retrieval(str(tmp_path / "test.json"), str(tmp_path / "val"), format="karpathy", batch_size=2).run(enc)
    assert out == pytest.approx({"t2i_r1": 3 / 5, "t2i_r5": 1.0, "t2i_r10": 1.0,
                                 "i2t_r1": 2 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0,
                                 "n_images": 3.0, "n_texts": 5.0})  # no count_truncated -> no fraction
    assert max(len(b) for b in enc.image_batches + enc.text_batches) <= 2
    assert len(enc.seen("image")) == 3 and len(enc.seen("text")) == 5


def test_jsonl_retrieval_merges_records_of_the_same_image(tmp_path):
    solid(tmp_path / "i" / "a.png", RED)
    solid(tmp_path / "i" / "b.png", BLUE)
    write_jsonl(tmp_path / "pairs.jsonl", [{"image": "a.png", "caption": "red one"},
                                            {"image": "b.png", "caption": ["blue one"]},
                                            {"image": "a.png", "caption": "ruby one"}])
    enc = Rigged({RED: E1, BLUE: E2}, {"red one": E1, "blue one": E2, "ruby one": E1})
    out = Retrieval(str(tmp_path / "pairs.jsonl"), str(tmp_path / "i"), format="jsonl").run(enc)
    assert out["n_images"] == 2.0 and out["n_texts"] == 3.0
    assert out["t2i_r1"] == 1.0 and out["i2t_r1"] == 1.0


def test_retrieval_unknown_format_and_misplaced_split_are_rejected(docci):
    ann, img = str(docci / "docci_descriptions.jsonlines"), str(docci / "images")
    with pytest.raises(ValueError) as e:
        Retrieval(ann, img, format="doci")
    one_line_error(e, "did you mean 'docci'")
    with pytest.raises(ValueError) as e:
        Retrieval(ann, img, format="jsonl", split="test")
    one_line_error(e, "'split'", "docci")


# ---- Registry ----------------------------------------------------------------------------------------------------

def test_every_registered_probe_resolves_to_a_class_with_run():
    for name in PROBES:
        assert callable(getattr(resolve(PROBES, name, "probe"), "run"))


def test_build_probe_builds_and_runs_by_name(sugar):
    probe = build_probe("sugarcrepe", {"annotations": str(sugar / "ann"), "images": str(sugar / "img")})
    assert probe.run(sugar_encoder())["n"] == 5.0


def test_build_probe_unknown_name_suggests(sugar):
    with pytest.raises(ValueError) as e:
        build_probe("sugarcrep", {})
    one_line_error(e, "'sugarcrep'", "did you mean 'sugarcrepe'")


def test_build_probe_unknown_option_names_it(sugar):
    with pytest.raises(ValueError) as e:
        build_probe("sugarcrepe", {"annotations": str(sugar / "ann"), "images": str(sugar / "img"), "batchsize": 8})
    one_line_error(e, "'batchsize'", "did you mean 'batch_size'")


@pytest.mark.parametrize("options", [{"batch_size": 0}, {"limit": 0}])
def test_bad_batch_size_or_limit_is_rejected(sugar, options):
    with pytest.raises(ValueError) as e:
        SugarCrepe(str(sugar / "ann"), str(sugar / "img"), **options)
    one_line_error(e, repr(next(iter(options))))


# ---- Per-example records (failure analysis) ----------------------------------------------------------------------
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


def test_winoground_records_hold_the_two_by_two_scores_and_each_verdict(wino):
    records = {}
    Winoground(str(wino / "examples.jsonl"), str(wino / "images")).run(wino_encoder(), records=records)
    rows = records["group"]
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert [(r["text"], r["image_score"], r["correct"]) for r in rows] == [
        (True, True, True), (True, False, False), (False, False, False)]
    assert rows[1]["matrix"] == [[pytest.approx(0.5), pytest.approx(0.6)], [pytest.approx(0.1), pytest.approx(0.9)]]
    assert rows[1]["group_tag"] == "relation" and rows[1]["images"][1].endswith("ex_1_img_1.png")


def test_retrieval_records_rank_each_caption_with_ties_against_it(docci):
    enc = Truncating({RED: E1, GREEN: E2, BLUE: E3},
                     {"a red card": E1, "a long green card on a table": E1, "blue card": E3})
    records = {}
    Retrieval(str(docci / "docci_descriptions.jsonlines"), str(docci / "images"), format="docci").run(
        enc, records=records)
    rows = {r["id"]: r for r in records["t2i"]}
    assert set(rows) == {"test_1", "test_2", "test_3"}
    green = rows["test_2"]  # scores red 1, own green 0, blue 0: the tie with blue ranks against it
    assert (green["rank"], green["correct"]) == (3, False)
    assert green["rival_images"][0].endswith("test_1.png") and green["rival_scores"][0] == pytest.approx(1.0)
    assert rows["test_3"]["correct"] and rows["test_3"]["rank"] == 1
