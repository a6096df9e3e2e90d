"""Retrieval scores tiny copies of DOCCI, Karpathy-split and JSON-lines sets and of the long-caption releases (IIW,
DCI, Urban1k, ShareGPT4V), each in its own layout, exactly as a rigged encoder's known answers dictate: recall at
1/5/10 both ways with ties against the answer, the text rules, truncation, records, and one-line errors on broken
files."""

import pytest

from helpers import BLUE, GREEN, RED, Rigged, one_line_error, solid, write_json, write_jsonl

from lit_compclip.probes import build_probe
from lit_compclip.probes.retrieval import Retrieval, apply_text_rule, sentence_pieces, truncation_flags

E1, E2, E3 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]


def dominant(image):
    """The image's key: which channel its top-left pixel is brightest in (robust to JPEG rounding)."""
    pixel = image.getpixel((0, 0))
    return max(range(3), key=lambda c: pixel[c])


def by_channel(texts: dict) -> Rigged:
    """Images keyed by dominant channel (0 red, 1 green, 2 blue), captions by their exact text; the text tower keeps
    at most three words (count_truncated) and says so (max_tokens)."""
    return Rigged([E1, E2, E3], texts, key=dominant, truncates=3, max_tokens=3)


# The same three-image outcome in every long-caption layout: red and blue texts right, the green text points at the
# red image (its own green image ties the blue one at 0 -> rank 3); the red image ties its own text with the green text.
EXPECTED = {"t2i_r1": 2 / 3, "t2i_r5": 1.0, "t2i_r10": 1.0, "i2t_r1": 1 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0,
            "n_images": 3.0, "n_texts": 3.0, "max_tokens": 3.0}


def rigged(red_text, green_text, blue_text):
    return by_channel({red_text: E1, green_text: E1, blue_text: E3})


# ---- text rules ----------------------------------------------------------------------------------------------------

def test_sentence_rule_splits_at_newlines_end_tags_and_periods_and_rejoins():
    text = "A red card.\nIt is bright.</s> Two  items . "
    assert sentence_pieces(text) == ["A red card", "It is bright", "Two  items"]
    assert apply_text_rule(text, "sentences") == "A red card. It is bright. Two  items"
    assert apply_text_rule("a\nb.", "newlines") == "a b." and apply_text_rule("a\nb.", "none") == "a\nb."


def test_truncation_flags_recount_only_mixed_batches():
    calls = []

    def count(texts):
        calls.append(len(texts))
        return sum(len(t.split()) > 3 for t in texts)

    texts = ["a b c d", "e f g h", "i", "j k l m", "n"]  # batches of 2: all cut, mixed, none cut
    assert truncation_flags(count, texts, 2) == [True, True, False, True, False]
    assert calls == [2, 2, 1, 1, 1]  # only the mixed batch is counted again, one text at a time


# ---- DOCCI (docci_descriptions.jsonlines), Karpathy splits and JSON lines ------------------------------------------

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
    enc = Rigged({RED: E1, GREEN: E2, BLUE: E3},
                 {"a red card": E1, "a long green card on a table": E1, "blue card": E3}, truncates=3)
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


def test_retrieval_records_rank_each_caption_with_ties_against_it(docci):
    enc = Rigged({RED: E1, GREEN: E2, BLUE: E3},
                 {"a red card": E1, "a long green card on a table": E1, "blue card": E3}, truncates=3)
    records = {}
    Retrieval(str(docci / "docci_descriptions.jsonlines"), str(docci / "images"), format="docci").run(
        enc, records=records)
    rows = {r["id"]: r for r in records["t2i"]}
    assert set(rows) == {"test_1", "test_2", "test_3"}
    green = rows["test_2"]  # scores red 1, own green 0, blue 0: the tie with blue ranks against it
    assert (green["rank"], green["correct"]) == (3, False)
    assert green["rival_images"][0].endswith("test_1.png") and green["rival_scores"][0] == pytest.approx(1.0)
    assert rows["test_3"]["correct"] and rows["test_3"]["rank"] == 1


# ---- IIW (google/imageinwords datasets/) --------------------------------------------------------------------------

@pytest.fixture
def iiw(tmp_path):
    ann, img = tmp_path / "datasets", tmp_path / "iiw"
    write_jsonl(ann / "DOCCI_Test" / "data.jsonl", [
        {"DOCCI": "a docci description", "IIW": "A red card.\nIt is bright.", "image": "test_00001",
         "metrics/Comprehensiveness": "Neutral"}])
    write_jsonl(ann / "IIW-400" / "data.jsonl", [
        {"IIW": "A green card on a table.", "IIW-P5B": "model text", "image/key": "aar_test_00002", "objects": []}])
    write_jsonl(ann / "DCI_Test" / "data.jsonl", [{"IIW": "Blue card", "ex_id": "3-data.json", "image": "sa_3.jpg"}])
    solid(img / "docci" / "test_00001.jpg", RED)
    solid(img / "docci_aar" / "aar_test_00002.jpg", GREEN)
    solid(img / "dci" / "sa_3.jpg", BLUE)
    return ann, img


def test_iiw_scores_the_three_subsets_with_rejoined_sentences_and_records_truncation(iiw):
    ann, img = iiw
    enc = rigged("A red card. It is bright", "A green card on a table", "Blue card")
    records = {}
    out = Retrieval(str(ann), str(img), format="iiw").run(enc, records=records)
    assert out == pytest.approx({**EXPECTED, "truncated_fraction": 2 / 3})  # the two long texts are cut
    rows = {r["id"]: r for r in records["t2i"]}
    assert list(rows) == ["DOCCI_Test/test_00001", "IIW-400/aar_test_00002", "DCI_Test/sa_3"]  # LoTLIP's order
    assert [r["truncated"] for r in rows.values()] == [True, True, False]
    green = rows["IIW-400/aar_test_00002"]
    assert (green["rank"], green["correct"]) == (3, False) and green["image"].endswith("docci_aar/aar_test_00002.jpg")


def test_iiw_one_subset_reads_only_its_file(iiw):
    ann, img = iiw
    (ann / "DCI_Test" / "data.jsonl").unlink()  # another subset's file may be absent
    out = Retrieval(str(ann), str(img), format="iiw", split="IIW-400").run(by_channel({"A green card on a table": E2}))
    assert (out["n_images"], out["t2i_r1"], out["i2t_r1"]) == (1.0, 1.0, 1.0)


def test_iiw_sentence_level_makes_each_sentence_a_caption_and_drops_fragments(iiw):
    ann, img = iiw
    write_jsonl(ann / "DOCCI_Test" / "data.jsonl", [{"IIW": "A red card. Is shiny.\nIt", "image": "test_00001"}])
    write_jsonl(ann / "IIW-400" / "data.jsonl", [{"IIW": "A green card.", "image/key": "aar_test_00002"}])
    enc = by_channel({"A red card": E1, "Is shiny": E2, "A green card": E2, "Blue card": E3})
    records = {}
    out = Retrieval(str(ann), str(img), format="iiw", sentence_level=True).run(enc, records=records)
    # "It" (2 characters) is dropped; "Is shiny" points at the green image, which then ties it with its own caption.
    assert out["n_texts"] == 4.0 and out["n_images"] == 3.0
    assert out["t2i_r1"] == pytest.approx(3 / 4) and out["i2t_r1"] == pytest.approx(2 / 3)
    assert [r["id"] for r in records["t2i"]][:2] == ["DOCCI_Test/test_00001/0", "DOCCI_Test/test_00001/1"]


def test_iiw_missing_caption_field_or_subset_file_is_one_line(iiw):
    ann, img = iiw
    write_jsonl(ann / "IIW-400" / "data.jsonl", [{"IIW-P5B": "model text", "image/key": "aar_test_00002"}])
    with pytest.raises(ValueError) as e:
        Retrieval(str(ann), str(img), format="iiw")
    one_line_error(e, "IIW-400/data.jsonl line 1", "lacks field 'IIW'")
    (ann / "DCI_Test" / "data.jsonl").unlink()
    with pytest.raises(FileNotFoundError) as e:
        Retrieval(str(ann), str(img), format="iiw")
    one_line_error(e, "IIW subset DCI_Test", "DCI_Test/data.jsonl")


# ---- DCI (densely_captioned_images/) --------------------------------------------------------------------------------

@pytest.fixture
def dci(tmp_path):
    root = tmp_path / "densely_captioned_images"
    write_json(root / "splits.json", {"train": ["1-data.json"], "valid": ["2-data.json"], "test": ["3-data.json"]})
    for n, (short, extra, colour) in enumerate([("A red card", "It is bright.", RED),
                                                 ("A green card", "On a table.", GREEN),
                                                 ("Blue card", "", BLUE)], start=1):
        write_json(root / "annotations" / f"{n}-data.json",
                   {"image": f"sa_{n}.jpg", "short_caption": short, "extra_caption": extra, "mask_data": {},
                    "mask_keys": []})
        solid(root / "photos" / f"sa_{n}.jpg", colour)
    return root


def test_dci_scores_every_split_on_the_short_and_extra_caption_rejoined(dci):
    enc = rigged("A red card. It is bright", "A green card. On a table", "Blue card")
    records = {}
    out = Retrieval(str(dci), str(dci / "photos"), format="dci").run(enc, records=records)
    assert out == pytest.approx({**EXPECTED, "truncated_fraction": 2 / 3})
    assert [r["id"] for r in records["t2i"]] == ["1-data.json", "2-data.json", "3-data.json"]
    test = Retrieval(str(dci), str(dci / "photos"), format="dci", split="test").run(enc)
    assert (test["n_images"], test["t2i_r1"]) == (1.0, 1.0)


def test_dci_missing_field_listed_file_or_photo_is_one_line(dci):
    write_json(dci / "annotations" / "2-data.json", {"image": "sa_2.jpg", "short_caption": "A green card"})
    with pytest.raises(ValueError) as e:
        Retrieval(str(dci), str(dci / "photos"), format="dci")
    one_line_error(e, "2-data.json", "lacks field 'extra_caption'")
    (dci / "annotations" / "2-data.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        Retrieval(str(dci), str(dci / "photos"), format="dci")
    one_line_error(e, "2-data.json", "split 'valid'", "splits.json")
    with pytest.raises(FileNotFoundError) as e:
        (dci / "photos" / "sa_3.jpg").unlink()
        Retrieval(str(dci), str(dci / "photos"), format="dci", split="test")
    one_line_error(e, "sa_3.jpg", "3-data.json")


# ---- Urban1k (caption/<name>.txt, image/<name>.jpg) ---------------------------------------------------------------

@pytest.fixture
def urban(tmp_path):
    root = tmp_path / "Urban1k"
    for name, text, colour in [("1", "A red card on it.\nA second line the protocol ignores", RED),
                               ("10", "Blue card", BLUE), ("2", "A green card on a table.", GREEN)]:
        (root / "caption").mkdir(parents=True, exist_ok=True)
        (root / "caption" / f"{name}.txt").write_text(text + "\n")
        solid(root / "image" / f"{name}.jpg", colour)
    return root


def test_urban1k_reads_each_files_first_line_verbatim(urban):
    enc = rigged("A red card on it.", "A green card on a table.", "Blue card")
    records = {}
    out = Retrieval(str(urban / "caption"), str(urban / "image"), format="urban1k").run(enc, records=records)
    assert out == pytest.approx({**EXPECTED, "truncated_fraction": 2 / 3})
    assert [r["id"] for r in records["t2i"]] == ["1", "2", "10"]  # natural order of the file names
    lotlip = rigged("A red card on it", "A green card on a table", "Blue card")  # LoTLIP re-joins sentences
    out = Retrieval(str(urban / "caption"), str(urban / "image"), format="urban1k", text_rule="sentences").run(lotlip)
    assert out["t2i_r1"] == pytest.approx(2 / 3)


def test_urban1k_blank_first_line_is_scored_as_an_empty_caption(urban):
    (urban / "caption" / "2.txt").write_text("\nA green card on a table.\n")  # Long-CLIP reads line 1 regardless
    enc = by_channel({"A red card on it.": E1, "": E2, "Blue card": E3})
    out = Retrieval(str(urban / "caption"), str(urban / "image"), format="urban1k").run(enc)
    assert "" in enc.seen("text") and (out["n_texts"], out["t2i_r1"]) == (3.0, 1.0)


def test_urban1k_missing_image_or_empty_file_is_one_line(urban):
    (urban / "caption" / "2.txt").write_text("")
    with pytest.raises(ValueError) as e:
        Retrieval(str(urban / "caption"), str(urban / "image"), format="urban1k")
    one_line_error(e, "2.txt", "is empty")
    (urban / "image" / "10.jpg").unlink()
    (urban / "caption" / "2.txt").write_text("A green card on a table.")
    with pytest.raises(FileNotFoundError) as e:
        Retrieval(str(urban / "caption"), str(urban / "image"), format="urban1k")
    one_line_error(e, "10.jpg", "10.txt")


# ---- ShareGPT4V (share-captioner JSON list, conversations[1]) -----------------------------------------------------

def sharegpt_record(n, caption):
    return {"id": f"sa_{n}", "image": f"sam/images/sa_{n}.jpg",
            "conversations": [{"from": "human", "value": "<image>\nWhat is in this image?"},
                              {"from": "gpt", "value": caption}]}


@pytest.fixture
def sharegpt(tmp_path):
    write_json(tmp_path / "share-captioner.json", [sharegpt_record(1, "A red card.\nOn it."),
                                                   sharegpt_record(2, "A green card on a table."),
                                                   sharegpt_record(3, "Blue card")])
    for n, colour in [(1, RED), (2, GREEN), (3, BLUE)]:
        solid(tmp_path / "data" / "sam" / "images" / f"sa_{n}.jpg", colour)
    return tmp_path


def test_sharegpt4v_scores_the_gpt_turn_with_newlines_as_spaces(sharegpt):
    enc = rigged("A red card. On it.", "A green card on a table.", "Blue card")
    records = {}
    out = Retrieval(str(sharegpt / "share-captioner.json"), str(sharegpt / "data"), format="sharegpt4v",
                    split="all").run(enc, records=records)
    assert out == pytest.approx({**EXPECTED, "truncated_fraction": 2 / 3})
    assert [r["id"] for r in records["t2i"]] == ["sa_1", "sa_2", "sa_3"]


def test_sharegpt4v_1k_is_the_first_thousand_records_and_needs_them(sharegpt):
    with pytest.raises(ValueError) as e:  # the default split is 1k
        Retrieval(str(sharegpt / "share-captioner.json"), str(sharegpt / "data"), format="sharegpt4v")
    one_line_error(e, "holds 3 records", "'1k'", "1000")
    write_json(sharegpt / "big.json", [sharegpt_record(1 + n % 3, f"caption {n}") for n in range(1003)])
    probe = Retrieval(str(sharegpt / "big.json"), str(sharegpt / "data"), format="sharegpt4v")
    enc = by_channel({f"caption {n}": [E1, E2, E3][n % 3] for n in range(1000)})
    out = probe.run(enc)
    assert (out["n_texts"], out["n_images"], out["t2i_r1"]) == (1000.0, 3.0, 1.0)  # records 1000-1002 never seen


def test_sharegpt4v_missing_caption_turn_or_image_is_one_line(sharegpt):
    write_json(sharegpt / "bad.json", [{"image": "sam/images/sa_1.jpg", "conversations": [{"value": "q"}]}])
    with pytest.raises(ValueError) as e:
        Retrieval(str(sharegpt / "bad.json"), str(sharegpt / "data"), format="sharegpt4v", split="all")
    one_line_error(e, "bad.json record 0", "'conversations'", "second turn")
    write_json(sharegpt / "gone.json", [sharegpt_record(9, "A red card")])
    with pytest.raises(FileNotFoundError) as e:
        Retrieval(str(sharegpt / "gone.json"), str(sharegpt / "data"), format="sharegpt4v", split="all")
    one_line_error(e, "sa_9.jpg", "gone.json record 0")


# ---- options -------------------------------------------------------------------------------------------------------

def test_misplaced_or_unknown_split_and_text_rule_are_one_line(urban, iiw):
    ann, img = iiw
    cases = [(dict(format="urban1k", split="test"), "'split' applies only to formats"),
             (dict(format="iiw", split="IIW400"), "did you mean 'IIW-400'"),
             (dict(format="sharegpt4v", split="1K"), "choose one of ['1k', '10k', 'all']"),
             (dict(format="iiw", text_rule="sentence"), "did you mean 'sentences'"),
             (dict(format="iiw", text_rule="none", sentence_level=True), "exclude each other")]
    for options, part in cases:
        with pytest.raises(ValueError) as e:
            Retrieval(str(ann), str(img), **options)
        one_line_error(e, part)
    with pytest.raises(FileNotFoundError) as e:  # a folder format given a file
        Retrieval(str(ann / "IIW-400" / "data.jsonl"), str(img), format="iiw")
    one_line_error(e, "'annotations'", "directory")


def test_registry_builds_a_long_caption_suite_with_its_options(urban):
    probe = build_probe("retrieval", {"annotations": str(urban / "caption"), "images": str(urban / "image"),
                                      "format": "urban1k", "text_rule": "newlines", "limit": 2})
    out = probe.run(by_channel({"A red card on it.": E1, "A green card on a table.": E2}))
    assert (out["n_texts"], out["t2i_r1"]) == (2.0, 1.0)
