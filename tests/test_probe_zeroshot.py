"""Zero-shot probe: a tiny ImageFolder and a rigged encoder whose top-1, top-5, ties and records are known."""

import json
import math

import pytest
import torch

from helpers import BLUE, GREEN, PURPLE, RED, Rigged, nearest, one_line_error, solid

from lit_compclip.probes import PROBES, build_probe
from lit_compclip.probes.zeroshot import TEMPLATES, ZeroShot, class_embeddings

E1, E2, E3, E4 = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]
S = 1 / math.sqrt(2)


def rigged(images: dict, texts) -> Rigged:
    """Images keyed by the nearest listed colour (JPEG and WebP shift solid colours slightly); `texts` a mapping or a
    function of the text."""
    return Rigged(images, texts, key=nearest(images))


# cat prompts -> E1, dog -> E2, fox: one prompt E3, the other E4, so the fox class is (E3 + E4) / sqrt(2).
TEXTS = {"a photo of a tabby cat.": E1, "art of tabby cat.": E1, "a photo of a beagle.": E2, "art of beagle.": E2,
         "a photo of a red fox.": E3, "art of red fox.": E4}
# fox image: dog scores .5/|v|, fox 1/sqrt(2)/|v|; either fox prompt alone would only tie the dog.
IMAGES = {RED: E1, GREEN: E2, PURPLE: [1, 1, 0, 0], BLUE: [0, 0.5, 0.5, 0.5]}


@pytest.fixture
def zoo(tmp_path):
    solid(tmp_path / "img" / "cat" / "1.png", RED)  # right
    solid(tmp_path / "img" / "cat" / "2.jpg", GREEN)  # wrong: looks like a dog
    solid(tmp_path / "img" / "cat" / "3.PNG", PURPLE)  # cat and dog tie exactly: wrong
    solid(tmp_path / "img" / "dog" / "1.png", GREEN)  # right
    solid(tmp_path / "img" / "fox" / "1.webp", BLUE)  # right only thanks to template averaging
    (tmp_path / "img" / "fox" / "notes.txt").write_text("not an image")
    (tmp_path / "img" / "fox" / "._1.webp").write_bytes(b"macOS fork")  # hidden: skipped
    (tmp_path / "names.txt").write_text("tabby cat\nbeagle\nred fox\n")
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\n\nart of {c}.\n")
    return tmp_path


def probe(zoo, **options):
    return ZeroShot(str(zoo / "img"), str(zoo / "names.txt"), str(zoo / "templates.txt"), **options)


def test_zeroshot_scores_top1_strictly_counting_the_tie_wrong(zoo):
    enc = rigged(IMAGES, TEXTS)
    out = probe(zoo, batch_size=2).run(enc)
    assert out == {"top1": pytest.approx(3 / 5), "top5": 1.0, "ties": 1.0, "n": 5.0}  # top-5 capped at 3 classes
    assert all(type(v) is float for v in out.values())
    assert sorted(enc.seen("text")) == sorted(TEXTS) and max(map(len, enc.image_batches + enc.text_batches)) <= 2


def test_zeroshot_class_embedding_averages_normalised_prompts_then_renormalises():
    text = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]], [[3.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])  # (C=2, T=2, D=3)
    assert torch.allclose(class_embeddings(text), torch.tensor([[0.0, S, S], [1.0, 0.0, 0.0]]))


def test_zeroshot_fox_is_right_only_with_both_templates(zoo):
    (zoo / "one.txt").write_text("a photo of a {c}.\n")
    one = ZeroShot(str(zoo / "img"), str(zoo / "names.txt"), str(zoo / "one.txt")).run(rigged(IMAGES, TEXTS))
    assert one["top1"] == pytest.approx(2 / 5) and one["ties"] == 2.0  # fox now ties dog


def test_zeroshot_top5_needs_fewer_than_five_rivals_at_or_above_the_truth(tmp_path):
    images = {(10, 0, 0): ("c0", [1, 6, 5, 4, 3, 2, 0]),  # five rivals ahead: miss
              (20, 0, 0): ("c1", [0, 5, 6, 7, 8, 0, 0]),  # three ahead: hit
              (30, 0, 0): ("c6", [5, 4, 3, 2, 1, 0, 1])}  # four ahead, one tie at 5th place: miss
    for k in range(7):  # one easy image per class: right at top-1
        images[(0, 10 * (k + 1), 0)] = (f"c{k}", [float(j == k) for j in range(7)])
    for colour, (folder, _) in images.items():
        solid(tmp_path / "img" / folder / f"{'easy' if colour[1] else 'hard'}.png", colour)
    (tmp_path / "names.json").write_text(json.dumps({f"c{k}": f"class {k}" for k in reversed(range(7))}))
    (tmp_path / "t.txt").write_text("{c}\n")
    enc = rigged({colour: v for colour, (_, v) in images.items()},
                 lambda text: [float(k == int(text.split()[1])) for k in range(7)])
    records: dict = {}
    out = ZeroShot(str(tmp_path / "img"), str(tmp_path / "names.json"), str(tmp_path / "t.txt")).run(enc, records)
    assert out == {"top1": pytest.approx(7 / 10), "top5": pytest.approx(8 / 10), "ties": 0.0, "n": 10.0}
    row = {r["id"]: r for r in records["zeroshot"]}["c6/hard.png"]
    assert row["captions"] == ["class 6", "class 0", "class 1", "class 2", "class 3"]  # truth + best 4 rivals
    assert row["correct"] is False and row["predicted"] == "c0"


def test_zeroshot_records_hold_truth_first_then_best_rivals(zoo):
    records: dict = {"other": [1]}
    out = probe(zoo).run(rigged(IMAGES, TEXTS), records)
    assert out == probe(zoo).run(rigged(IMAGES, TEXTS))  # records change nothing
    assert records["other"] == [1] and json.loads(json.dumps(records)) == records
    rows = records["zeroshot"]
    assert [r["id"] for r in rows] == ["cat/1.png", "cat/2.jpg", "cat/3.PNG", "dog/1.png", "fox/1.webp"]
    assert rows[0]["image"] == str(zoo / "img" / "cat" / "1.png")
    assert [(r["correct"], r["label"], r["predicted"]) for r in rows] == [
        (True, "cat", "cat"), (False, "cat", "dog"), (False, "cat", "dog"), (True, "dog", "dog"),
        (True, "fox", "fox")]
    tie = rows[2]
    assert tie["captions"] == ["tabby cat", "beagle", "red fox"]
    assert tie["scores"] == pytest.approx([S, S, 0.0]) and tie["scores"][0] == tie["scores"][1]
    fox = rows[4]
    assert fox["captions"] == ["red fox", "beagle", "tabby cat"]
    norm = math.sqrt(0.75)
    assert fox["scores"] == pytest.approx([S / norm, 0.5 / norm, 0.0], abs=1e-6)


def test_zeroshot_nan_score_is_a_miss_at_every_k_and_not_a_tie(zoo):
    out = probe(zoo, limit=1).run(rigged({RED: [float("nan")] * 4}, TEXTS))
    assert out == {"top1": 0.0, "top5": 0.0, "ties": 0.0, "n": 1.0}


def test_zeroshot_limit_keeps_the_first_images_in_folder_order(zoo):
    out = probe(zoo, limit=2).run(rigged(IMAGES, TEXTS))
    assert out == {"top1": 0.5, "top5": 1.0, "ties": 0.0, "n": 2.0}  # cat/1 right, cat/2 wrong


def test_zeroshot_default_templates_are_used_when_none_given(zoo):
    enc = rigged(IMAGES, lambda t: E1 if "cat" in t else E2 if "beagle" in t else E3)
    out = ZeroShot(str(zoo / "img"), str(zoo / "names.txt")).run(enc)
    assert sorted(enc.seen("text")) == sorted(t.replace("{c}", n) for t in TEMPLATES
                                            for n in ("tabby cat", "beagle", "red fox"))
    assert len(TEMPLATES) > 1 and out["n"] == 5.0


def test_zeroshot_json_classnames_map_folders_in_any_key_order(zoo):
    (zoo / "names.json").write_text(json.dumps({"fox": "red fox", "cat": "tabby cat", "dog": "beagle"}))
    out = ZeroShot(str(zoo / "img"), str(zoo / "names.json"), str(zoo / "templates.txt")).run(
        rigged(IMAGES, TEXTS))
    assert out["top1"] == pytest.approx(3 / 5)


def test_zeroshot_json_classnames_that_miss_a_folder_name_both_sides(zoo):
    (zoo / "names.json").write_text(json.dumps({"cat": "tabby cat", "dgo": "beagle", "fox": "red fox"}))
    with pytest.raises(ValueError) as e:
        ZeroShot(str(zoo / "img"), str(zoo / "names.json"))
    one_line_error(e, "names.json", "['dog']", "['dgo']")


def test_zeroshot_classname_count_must_match_the_folders(zoo):
    (zoo / "names.txt").write_text("tabby cat\nbeagle\n")
    with pytest.raises(ValueError) as e:
        probe(zoo)
    one_line_error(e, "names.txt", "2 class names", "3 class folders")


def test_zeroshot_template_without_placeholder_names_the_line(zoo):
    (zoo / "templates.txt").write_text("a photo of a {c}.\n\na photo of a {}.\n")
    with pytest.raises(ValueError) as e:
        probe(zoo)
    one_line_error(e, "templates.txt", "line 3", "'{c}'")


def test_zeroshot_empty_class_folder_is_named(zoo):
    (zoo / "img" / "eel").mkdir()
    (zoo / "names.txt").write_text("tabby cat\nbeagle\neel\nred fox\n")
    with pytest.raises(ValueError) as e:
        probe(zoo)
    one_line_error(e, "eel", "holds no")


@pytest.mark.parametrize("option", ["images", "classnames", "templates"])
def test_zeroshot_missing_path_names_the_option(zoo, option):
    paths = {"images": str(zoo / "img"), "classnames": str(zoo / "names.txt"),
             "templates": str(zoo / "templates.txt"), option: str(zoo / "nope")}
    with pytest.raises(FileNotFoundError) as e:
        ZeroShot(**paths)
    one_line_error(e, f"'{option}'", "nope")


def test_zeroshot_unreadable_image_names_file_and_class(zoo):
    (zoo / "img" / "dog" / "1.png").write_bytes(b"not an image")
    p = probe(zoo)
    with pytest.raises(ValueError) as e:
        p.run(rigged(IMAGES, TEXTS))
    one_line_error(e, "1.png", "class 'dog'", "cannot be read")


def test_zeroshot_is_registered_and_built_by_name(zoo):
    assert "zeroshot" in PROBES
    p = build_probe("zeroshot", {"images": str(zoo / "img"), "classnames": str(zoo / "names.txt"),
                                 "templates": str(zoo / "templates.txt")})
    assert p.run(rigged(IMAGES, TEXTS))["n"] == 5.0
