"""Long-caption retrieval formats (IIW, DCI, Urban1k, ShareGPT4V) score tiny copies in each release's own layout
exactly as a rigged encoder's known answers dictate, record truncation, and fail in one line on broken files."""

import pytest
import torch
from PIL import Image

from helpers import one_line_error, write_json, write_jsonl

from lit_compclip.probes import build_probe
from lit_compclip.probes.retrieval import Retrieval, apply_text_rule, sentence_pieces, truncation_flags

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
E1, E2, E3 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]


def dominant(image):
    """The image's key: which channel its top-left pixel is brightest in (robust to JPEG rounding)."""
    pixel = image.getpixel((0, 0))
    return max(range(3), key=lambda c: pixel[c])


class Rigged:
    """Fake encoder: images keyed by dominant channel (0 red, 1 green, 2 blue), captions by their exact text; the
    text tower keeps at most three words (count_truncated) and says so (max_tokens)."""

    max_tokens = 3

    def __init__(self, images: list, texts: dict):
        unit = lambda v: torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float32), dim=0)  # noqa: E731
        self.images = [unit(v) for v in images]
        self.texts = {k: unit(v) for k, v in texts.items()}
        self.seen_texts: list[str] = []

    def encode_image(self, images):
        return torch.stack([self.images[dominant(im)] for im in images])

    def encode_text(self, texts):
        self.seen_texts += texts
        return torch.stack([self.texts[t] for t in texts])  # a KeyError here: the protocol's text was not produced

    def count_truncated(self, texts):
        return sum(len(t.split()) > 3 for t in texts)


def picture(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)  # format from the suffix: .jpg files are real JPEGs


# The same three-image outcome in every layout: red and blue texts right, the green text points at the red image
# (its own green image ties the blue one at 0 -> rank 3); the red image ties its own text with the green text.
EXPECTED = {"t2i_r1": 2 / 3, "t2i_r5": 1.0, "t2i_r10": 1.0, "i2t_r1": 1 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0,
            "n_images": 3.0, "n_texts": 3.0, "max_tokens": 3.0}


def rigged(red_text, green_text, blue_text):
    return Rigged([E1, E2, E3], {red_text: E1, green_text: E1, blue_text: E3})


# ---- Text rules ----------------------------------------------------------------------------------------------------

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
    picture(img / "docci" / "test_00001.jpg", RED)
    picture(img / "docci_aar" / "aar_test_00002.jpg", GREEN)
    picture(img / "dci" / "sa_3.jpg", BLUE)
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
    out = Retrieval(str(ann), str(img), format="iiw", split="IIW-400").run(Rigged([E1, E2, E3],
                                                                                  {"A green card on a table": E2}))
    assert (out["n_images"], out["t2i_r1"], out["i2t_r1"]) == (1.0, 1.0, 1.0)


def test_iiw_sentence_level_makes_each_sentence_a_caption_and_drops_fragments(iiw):
    ann, img = iiw
    write_jsonl(ann / "DOCCI_Test" / "data.jsonl", [{"IIW": "A red card. Is shiny.\nIt", "image": "test_00001"}])
    write_jsonl(ann / "IIW-400" / "data.jsonl", [{"IIW": "A green card.", "image/key": "aar_test_00002"}])
    enc = Rigged([E1, E2, E3], {"A red card": E1, "Is shiny": E2, "A green card": E2, "Blue card": E3})
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
        picture(root / "photos" / f"sa_{n}.jpg", colour)
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
        picture(root / "image" / f"{name}.jpg", colour)
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
    enc = Rigged([E1, E2, E3], {"A red card on it.": E1, "": E2, "Blue card": E3})
    out = Retrieval(str(urban / "caption"), str(urban / "image"), format="urban1k").run(enc)
    assert "" in enc.seen_texts and (out["n_texts"], out["t2i_r1"]) == (3.0, 1.0)


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
        picture(tmp_path / "data" / "sam" / "images" / f"sa_{n}.jpg", colour)
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
    enc = Rigged([E1, E2, E3], {f"caption {n}": [E1, E2, E3][n % 3] for n in range(1000)})
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


# ---- Options --------------------------------------------------------------------------------------------------------

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
    out = probe.run(Rigged([E1, E2, E3], {"A red card on it.": E1, "A green card on a table.": E2}))
    assert (out["n_texts"], out["t2i_r1"]) == (2.0, 1.0)
