"""ARO scores tiny copies in the official formats exactly as rigged encoders' known answers dictate: Visual Genome
Relation and Attribution on the boxes' crops, micro and macro averages (with the official exclusions and floor),
frozen COCO-Order and Flickr30k-Order negatives, records, and one-line errors on broken files."""

import json
import random

import pytest
from PIL import Image

from helpers import BLUE, RED, Rigged, one_line_error, write_json

from lit_compclip.probes.aro import ARO, OFFICIAL_EXCLUDED_RELATIONS, OFFICIAL_MIN_PAIR_CASES
from lit_compclip.probes.order import (KINDS, PERTURB, frozen_path, normalize, perturbations, tag, tokenize,
                                       trigrams)

# ---- Visual Genome Relation and Attribution: crops, micro and macro ----------------------------------------------

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


# ---- the official macro average ----------------------------------------------------------------------------------

UNIT = {"e1": [1.0, 0.0], "e2": [0.0, 1.0], "mid": [0.6, 0.8]}


def by_verdict(good=(), bad=()) -> Rigged:
    """Every image embeds to e1; a caption embeds to e1 (right), e2 (wrong) or, if unlisted, to `mid` (score 0.6)."""
    good, bad = set(good), set(bad)
    return Rigged(lambda key: UNIT["e1"], lambda t: UNIT["e1"] if t in good else UNIT["e2"] if t in bad
                  else UNIT["mid"], key=lambda image: None)


def vg_case(right, **group):
    true, false = ("T", "F") if right else ("F", "T")  # "T" embeds to e1, the image's vector
    return {"image_path": "scene.png", "bbox_x": 1, "bbox_y": 2, "bbox_w": 5, "bbox_h": 4,
            "true_caption": true, "false_caption": false, **group}


@pytest.fixture
def vg(tmp_path):
    Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / "scene.png")
    relation = ([vg_case(True, relation_name="on")] * 2 + [vg_case(False, relation_name="on")]
                + [vg_case(False, relation_name="next to")] * 2 + [vg_case(True, relation_name="above")])
    pair, thin = {"attributes": ["red", "blue"]}, {"attributes": ["blue", "red"]}
    attribution = [vg_case(True, **pair)] * 20 + [vg_case(False, **pair)] * 5 + [vg_case(False, **thin)] * 24
    write_json(tmp_path / "visual_genome_relation.json", relation)
    write_json(tmp_path / "visual_genome_attribution.json", attribution)
    return tmp_path


def vg_encoder():
    return by_verdict(good={"T"}, bad={"F"})


def test_official_macro_drops_the_listed_relations_and_pairs_under_25_cases(vg):
    assert "next to" in OFFICIAL_EXCLUDED_RELATIONS and OFFICIAL_MIN_PAIR_CASES == 25
    out = ARO(str(vg), str(vg), official_macro=True).run(vg_encoder())
    assert out["vg_relation"] == 0.5  # micro: 3 of 6
    assert out["vg_relation_macro"] == pytest.approx((2 / 3 + 1) / 2)  # "next to" left out
    assert out["vg_attribution"] == pytest.approx(20 / 49)
    assert out["vg_attribution_macro"] == pytest.approx(0.8)  # blue_red has 24 cases: dropped; red_blue (25) kept


def test_default_macro_keeps_every_group(vg):
    out = ARO(str(vg), str(vg)).run(vg_encoder())
    assert out["vg_relation_macro"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert out["vg_attribution_macro"] == pytest.approx((0.8 + 0) / 2)


def test_official_macro_refuses_its_own_floor_or_exclusions_being_overridden(vg):
    for options in ({"min_cases": 5}, {"exclude_relations": ["on"]}):
        with pytest.raises(ValueError) as e:
            ARO(str(vg), str(vg), official_macro=True, **options)
        one_line_error(e, "official_macro", "min_cases")


def test_synthetic_relations_survive_the_official_exclusion_list():
    assert not {"left of", "right of", "above", "below"} & OFFICIAL_EXCLUDED_RELATIONS


def test_vg_records_hold_the_box_group_and_whether_the_macro_counts_it(vg):
    records = {}
    ARO(str(vg), str(vg), official_macro=True).run(vg_encoder(), records)
    rel, attr = records["vg_relation"], records["vg_attribution"]
    assert [r["id"] for r in rel] == [str(i) for i in range(6)]
    assert rel[2] == {"id": "2", "image": str(vg / "scene.png"), "box": [1, 2, 6, 6], "captions": ["F", "T"],
                      "scores": [0.0, 1.0], "correct": False, "tied": False, "group": "on", "in_macro": True}
    assert [r["in_macro"] for r in rel] == [True, True, True, False, False, True]
    assert attr[0]["group"] == "red_blue" and attr[0]["in_macro"] and not attr[-1]["in_macro"]
    json.dumps(records)  # serialisable as the contract asks


def test_records_none_gives_the_same_metrics(vg):
    probe = ARO(str(vg), str(vg))
    assert probe.run(vg_encoder()) == probe.run(vg_encoder(), {})


# ---- COCO-Order / Flickr30k-Order --------------------------------------------------------------------------------

LONG = "A man riding a red bike down a busy street."
WRONG = "Two small dogs are playing with a ball in the green grass."
SHORT = "A cat."  # one noun, no adjective: shuffling nouns and adjectives leaves it unchanged


@pytest.fixture
def karpathy(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (6, 6), (0, 0, 255)).save(tmp_path / name)
    write_json(tmp_path / "coco_karpathy_test.json",
               [{"image": "a.png", "caption": [LONG, WRONG]}, {"image": "b.png", "caption": [SHORT]}])
    return tmp_path


def order_encoder():
    return by_verdict(good={normalize(LONG), normalize(SHORT)}, bad={normalize(WRONG)})


def coco(root, **options):
    return ARO(coco_order=str(root / "coco_karpathy_test.json"), coco_images=str(root), **options)


def test_order_true_caption_must_beat_all_four_and_an_unchanged_short_caption_ties(karpathy):
    records = {}
    out = coco(karpathy).run(order_encoder(), records)
    negatives = {r["id"]: r["captions"][1:] for r in records["coco_order"]}
    assert normalize(LONG) not in negatives["0:0"] and normalize(WRONG) not in negatives["0:1"]  # no accidental tie
    assert negatives["1:0"][0] == normalize(SHORT)
    # the official argmax puts the true caption first, so the unchanged short caption's tie counts right there
    assert out == {"coco_order": pytest.approx(1 / 3), "coco_order_official": pytest.approx(2 / 3), "ties": 1.0,
                   "n": 3.0}
    assert [(r["correct"], r["tied"]) for r in records["coco_order"]] == [(True, False), (False, False), (False, True)]


def test_order_negatives_are_frozen_next_to_the_file_and_an_edit_is_what_gets_scored(karpathy):
    coco(karpathy)
    frozen = frozen_path(karpathy / "coco_karpathy_test.json", 0)
    assert frozen.name == "coco_karpathy_test.order_negatives.seed0.json"
    data = json.loads(frozen.read_text())
    assert data["kinds"] == list(KINDS) and len(data["negatives"]) == 3
    data["negatives"]["0:0"]["negatives"][2] = normalize(LONG)  # an exact copy: now a tie
    frozen.write_text(json.dumps(data))
    records = {}
    out = coco(karpathy).run(order_encoder(), records)
    assert json.loads(frozen.read_text()) == data  # read, never regenerated
    assert records["coco_order"][0]["captions"][3] == normalize(LONG)
    assert out["coco_order"] == 0.0 and out["ties"] == 2.0


def test_order_negatives_depend_only_on_the_seed(karpathy, tmp_path):
    first = coco(karpathy, coco_order_negatives=str(tmp_path / "x.json")).examples["coco_order"]
    again = coco(karpathy, coco_order_negatives=str(tmp_path / "y.json")).examples["coco_order"]
    other = coco(karpathy, order_seed=1).examples["coco_order"]
    assert first == again
    assert [ex.captions for ex in first] != [ex.captions for ex in other]
    assert (karpathy / "coco_karpathy_test.order_negatives.seed1.json").is_file()


def test_unwritable_frozen_file_location_fails_naming_it_and_the_option(karpathy):
    where = karpathy / "missing_dir" / "negs.json"
    with pytest.raises(ValueError) as e:
        coco(karpathy, coco_order_negatives=str(where))
    one_line_error(e, str(where), "coco_order_negatives")


def test_changed_annotation_does_not_silently_reuse_stale_negatives(karpathy):
    coco(karpathy)
    write_json(karpathy / "coco_karpathy_test.json", [{"image": "a.png", "caption": ["A different caption."]}])
    with pytest.raises(ValueError) as e:
        coco(karpathy)
    one_line_error(e, "caption 0:0", "delete")


CAPTIONS = [LONG, WRONG, SHORT, "An old wooden bench sits beside a lake, under tall trees.",
            "Three people standing on top of a snowy hill with skis and poles."]


@pytest.mark.parametrize("kind", KINDS)
def test_each_perturbation_keeps_the_multiset_of_words(kind):
    for caption in CAPTIONS:
        tokens = tokenize(caption)
        for seed in range(5):
            assert sorted(PERTURB[kind](tokens, random.Random(seed))) == sorted(tokens)
    for caption in CAPTIONS:
        negative = perturbations(caption, 0, "k")[KINDS.index(kind)]
        # Against the caption re-joined from its tokens: like the official code, a comma becomes its own word.
        assert sorted(negative.split()) == sorted(normalize(" ".join(tokenize(caption))).split())


def test_each_perturbation_moves_only_what_it_should():
    tokens = tokenize(CAPTIONS[3])
    rng = random.Random(0)
    for kind, moves in (("shuffle_nouns_and_adj", {"NOUN", "ADJ"}), ("shuffle_allbut_nouns_and_adj", {"OTHER"})):
        out = PERTURB[kind](tokens, rng)
        assert [t for t in out if tag(t) not in moves] == [t for t in tokens if tag(t) not in moves]
        assert [tag(t) for t in out] == [tag(t) for t in tokens]  # nouns swap with nouns, adjectives with adjectives
    within = PERTURB["shuffle_within_trigrams"](tokens, rng)
    assert [sorted(g) for g in trigrams(within)] == [sorted(g) for g in trigrams(tokens)]
    whole = trigrams(PERTURB["shuffle_trigrams"](tokens, rng))
    assert sorted(map(tuple, whole)) == sorted(map(tuple, trigrams(tokens)))


def test_perturbations_are_deterministic_and_seeded():
    assert [perturbations(c, 0, "3:1") for c in CAPTIONS] == [perturbations(c, 0, "3:1") for c in CAPTIONS]
    assert [perturbations(c, 0, "3:1") for c in CAPTIONS] != [perturbations(c, 7, "3:1") for c in CAPTIONS]


def test_tagger_uses_the_closed_class_list():
    assert [tag(t) for t in tokenize("A red bike is riding on the street.")] == \
        ["OTHER", "ADJ", "NOUN", "OTHER", "OTHER", "OTHER", "OTHER", "NOUN", "OTHER"]


# ---- options and paths -------------------------------------------------------------------------------------------

def test_both_order_sets_and_vg_share_one_run(vg, karpathy):
    write_json(karpathy / "flickr30k_test.json", [{"image": "b.png", "caption": [LONG]}])
    probe = ARO(str(vg), str(vg), subsets=["vg_relation"], coco_order=str(karpathy / "coco_karpathy_test.json"),
                coco_images=str(karpathy), flickr_order=str(karpathy / "flickr30k_test.json"),
                flickr_images=str(karpathy))
    enc = by_verdict(good={normalize(LONG), normalize(SHORT), "T"}, bad={normalize(WRONG), "F"})
    out = probe.run(enc)
    assert set(out) == {"vg_relation", "vg_relation_macro", "coco_order", "flickr_order", "coco_order_official",
                        "flickr_order_official", "ties", "n"}
    assert out["flickr_order"] == 1.0 and out["n"] == 6 + 3 + 1


def test_at_least_one_subset_is_needed():
    with pytest.raises(ValueError) as e:
        ARO()
    one_line_error(e, "'root'", "'coco_order'", "'flickr_order'")


def test_order_file_without_its_image_folder_names_the_option(karpathy):
    with pytest.raises(ValueError) as e:
        ARO(coco_order=str(karpathy / "coco_karpathy_test.json"))
    one_line_error(e, "'coco_images'")


def test_order_missing_image_fails_at_construction_naming_the_record(karpathy):
    (karpathy / "b.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        coco(karpathy)
    one_line_error(e, "b.png", "coco_karpathy_test.json record 1")


def test_order_caption_field_must_be_a_list_of_strings(karpathy):
    write_json(karpathy / "coco_karpathy_test.json", [{"image": "a.png", "caption": [LONG, 3]}])
    with pytest.raises(ValueError) as e:
        coco(karpathy)
    one_line_error(e, "record 0 caption 1")
