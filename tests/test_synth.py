"""Tests for the synthetic world: determinism, layout, held-out split, families, captions, probe files, statistics."""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_compclip.data.captions import split_sentences
from lit_compclip.synth import generate, hard_negative_stats
from lit_compclip.synth import captions as cap
from lit_compclip.synth.world import (COLOURS, HELD_OUT, INVERSE, MARGIN, MEMBERS, RELATIONS, SHAPES, SIZES,
                                      TWIN_MEMBERS, sample_family, shape_twin)

ARGS = dict(train_families=12, eval_families=8, shard_size=8, image_size=64, probe_size=12, seed=3)
ALL_RELATION_WORDS = sorted({w for v in cap.RELATION_WORDS.values() for ws in v.values() for w in ws}, key=len,
                            reverse=True)
NP = rf"(?:(small|large) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
PAIR = re.compile(rf"^a {NP} (and|{'|'.join(ALL_RELATION_WORDS)}) a {NP}")
EVAL_WORDS = {w for v in cap.RELATION_WORDS.values() for w in v["eval"]}
WORD_TO_RELATION = {w: r for r, v in cap.RELATION_WORDS.items() for ws in v.values() for w in ws}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, **ARGS)
    return out


def read_shards(folder: Path) -> list[tuple[str, dict[str, bytes]]]:
    """[(shard name, {member name: bytes})] in tar order."""
    shards = []
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            shards.append((path.name, {m.name: tar.extractfile(m).read() for m in tar.getmembers()}))
    return shards


def records(folder: Path) -> list[dict]:
    return [json.loads(b) for _, files in read_shards(folder) for name, b in files.items() if name.endswith(".json")]


def find(scene: dict, colour: str, shape: str) -> int | None:
    for i, o in enumerate(scene["objects"]):
        if (o["colour"], o["shape"]) == (colour, shape):
            return i
    return None


def holds(scene: dict, i: int, relation: str, j: int) -> bool:
    """Is object i `relation` object j in the scene graph (either direction stored)?"""
    for r in scene["relations"]:
        if (r["subject"], r["relation"], r["object"]) in ((i, relation, j), (j, INVERSE[relation], i)):
            return True
    return False


def pair_true(caption: str, scene: dict) -> bool:
    """Is a probe caption 'a [size] colour shape (and|<rel>) a [size] colour shape' true of the scene?"""
    m = PAIR.match(caption)
    assert m, caption
    s1, c1, sh1, link, s2, c2, sh2 = m.groups()
    assert link == "and" or link in EVAL_WORDS, f"probe caption uses a train phrasing: {caption}"
    i, j = find(scene, c1, sh1), find(scene, c2, sh2)
    if i is None or j is None:
        return False
    if (s1 and scene["objects"][i]["size"] != s1) or (s2 and scene["objects"][j]["size"] != s2):
        return False
    return link == "and" or holds(scene, i, WORD_TO_RELATION[link], j)


def test_generate_is_byte_identical_for_same_arguments(tmp_path):
    def snapshot(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    small = dict(ARGS, train_families=4, eval_families=3, probe_size=5)
    generate(tmp_path / "a", **small, workers=1)
    generate(tmp_path / "b", **small, workers=2)  # images rendered by two processes: the same bytes
    generate(tmp_path / "c", **dict(small, seed=4))
    a, b, c = snapshot(tmp_path / "a"), snapshot(tmp_path / "b"), snapshot(tmp_path / "c")
    assert a == b
    assert a["train/shard-000000.tar"] != c["train/shard-000000.tar"]  # the seed matters


def test_shards_hold_jpg_txt_json_per_key_with_scene_fields(data):
    keys, size = [], ARGS["shard_size"]
    for split, n_samples in (("train", 8 * ARGS["train_families"]), ("val", 4 * ARGS["eval_families"])):
        shards = read_shards(data / split)  # a training family has 4 counterfactuals and their shape twins
        assert [name for name, _ in shards] == [f"shard-{i:06d}.tar" for i in range(len(shards))]
        assert sum(len(files) for _, files in shards) == 3 * n_samples
        for _, files in shards:
            by_key = defaultdict(set)
            for name in files:
                key, ext = name.split(".")
                by_key[key].add(ext)
            assert len(by_key) <= size and all(exts == {"jpg", "json", "txt"} for exts in by_key.values())
            for key in by_key:
                rec = json.loads(files[f"{key}.json"])
                assert set(rec) >= {"key", "alt_text", "recaption", "family", "split", "scene"}
                assert rec["key"] == key and re.fullmatch(r"\d{9}", key) and rec["split"] == split
                assert files[f"{key}.txt"].decode() == rec["alt_text"]
                for obj in rec["scene"]["objects"]:
                    assert set(obj) == {"shape", "colour", "size", "bbox"} and len(obj["bbox"]) == 4
                for r in rec["scene"]["relations"]:
                    assert set(r) == {"subject", "relation", "object"} and r["relation"] in RELATIONS
                img = Image.open(io.BytesIO(files[f"{key}.jpg"]))
                assert img.format == "JPEG" and img.size == (64, 64)
                keys.append(key)
    for path in (data / "train").glob("*.tar"):  # fixed metadata, so reruns are byte-identical
        with tarfile.open(path) as tar:
            assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, 0, "", "")}
    assert keys == [f"{i:09d}" for i in range(len(keys))]  # running index, unique across splits


def test_held_out_combos_absent_from_train_and_in_every_eval_base(data):
    assert len(HELD_OUT) == 6
    assert sorted(c for c, _ in HELD_OUT) == sorted(COLOURS) and sorted(s for _, s in HELD_OUT) == sorted(SHAPES)
    for rec in records(data / "train"):
        assert not {(o["colour"], o["shape"]) for o in rec["scene"]["objects"]} & HELD_OUT
    bases = [r for r in records(data / "val") if r["member"] == "base"]
    assert len(bases) == ARGS["eval_families"]
    for rec in bases:
        assert {(o["colour"], o["shape"]) for o in rec["scene"]["objects"]} & HELD_OUT


def test_training_families_have_shape_twins_that_differ_only_in_one_objects_shape(data):
    families = defaultdict(list)
    for rec in records(data / "train"):
        families[rec["family"]].append(rec)
    replaced = Counter()
    for members in families.values():
        assert [m["member"] for m in members] == list(MEMBERS) + list(TWIN_MEMBERS)
        assert [int(m["key"]) for m in members] == list(range(int(members[0]["key"]), int(members[0]["key"]) + 8))
        changes = set()
        for original, twin in zip(members[:4], members[4:]):
            a, b = original["scene"], twin["scene"]
            assert a["relations"] == b["relations"] and len(a["objects"]) == len(b["objects"])
            diff = [(i, o["shape"], t["shape"]) for i, (o, t) in enumerate(zip(a["objects"], b["objects"]))
                    if o != t]
            assert len(diff) == 1 and all(o == {**t, "shape": o["shape"]} for o, t in zip(a["objects"], b["objects"]))
            changes.add(diff[0])
            assert diff[0][2] not in {o["shape"] for o in a["objects"]}  # a shape the scene lacks
            assert twin["recaption"] != original["recaption"]
        assert len(changes) == 1  # the same object gets the same new shape in every member
        replaced[changes.pop()[0]] += 1
    assert set(replaced) == {0, 1}  # either object
    for rec in records(data / "val"):
        assert rec["member"] in MEMBERS  # evaluation families have no twins


def test_shape_twins_can_be_turned_off_and_are_checked(tmp_path):
    generate(tmp_path / "off", **dict(ARGS, train_families=3, eval_families=1, probe_size=2, shard_size=4,
                                      shape_twins=0))
    assert len(records(tmp_path / "off" / "train")) == 12
    with pytest.raises(ValueError, match="shape_twins must be 0 or 1"):
        generate(tmp_path / "x", **dict(ARGS, shape_twins=2))
    with pytest.raises(ValueError, match="multiple of a training family's 8 samples"):
        generate(tmp_path / "x", **dict(ARGS, shard_size=4))


def test_family_members_are_the_counterfactuals(data):
    families = defaultdict(list)
    for rec in records(data / "train") + records(data / "val"):
        families[rec["family"]].append(rec)
    assert len(families) == ARGS["train_families"] + ARGS["eval_families"]
    for members in families.values():
        members = members[:4]  # the shape twins of a training family: the next test
        assert [m["member"] for m in members] == list(MEMBERS)
        assert [int(m["key"]) for m in members] == list(range(int(members[0]["key"]), int(members[0]["key"]) + 4))
        base, colour, position, both = (m["scene"] for m in members)
        attrs = lambda s: [(o["shape"], o["colour"], o["size"]) for o in s["objects"]]
        rels = lambda s: [r["relation"] for r in s["relations"]]
        (s0, c0, z0), (s1, c1, z1) = attrs(base)[:2]
        assert attrs(colour)[:2] == [(s0, c1, z0), (s1, c0, z1)] and attrs(colour)[2:] == attrs(base)[2:]
        assert rels(colour) == rels(base)
        assert attrs(position) == attrs(base) and rels(position)[0] == INVERSE[rels(base)[0]]
        assert rels(both)[0] == INVERSE[rels(base)[0]]
        if members[0]["split"] == "train":  # the shapes exchanged and nothing else: each place keeps colour and size
            assert attrs(both)[:2] == [(s0, c1, z1), (s1, c0, z0)] and attrs(both)[2:] == attrs(base)[2:]
        else:  # the probes' eval families as in format 7: each object keeps its size, so sizes swap places too
            assert attrs(both) == attrs(colour)
        assert base["objects"][0]["bbox"] != colour["objects"][0]["bbox"]  # re-rendered with fresh jitter


@pytest.mark.parametrize("n_objects", [2, 3, 4])
def test_relations_agree_with_bboxes_inside_margin_without_overlap(n_objects):
    size = 64
    for f in range(40):
        for scene in sample_family(random.Random(f), n_objects, ("train", "eval")[f % 2], size):
            objs = scene["objects"]
            assert len({o["colour"] for o in objs}) == len({o["shape"] for o in objs}) == n_objects
            for o in objs:
                x, y, w, h = o["bbox"]
                assert MARGIN * size - 0.1 <= min(x, y) and max(x + w, y + h) <= (1 - MARGIN) * size + 0.1
            assert [(r["subject"], r["object"]) for r in scene["relations"]] == [(i, i + 1) for i in range(n_objects - 1)]
            for r in scene["relations"]:
                a, b = objs[r["subject"]]["bbox"], objs[r["object"]]["bbox"]
                if r["relation"] in ("right of", "below"):
                    a, b = b, a
                k = 0 if r["relation"] in ("left of", "right of") else 1
                assert a[k] + a[k + 2] + 2 < b[k]  # clearly separated on the relation axis
                along = (b[k] + b[k + 2] / 2) - (a[k] + a[k + 2] / 2)
                across = abs((b[1 - k] + b[3 - k] / 2) - (a[1 - k] + a[3 - k] / 2))
                assert across < along  # the other axis never makes the relation ambiguous
            for i in range(n_objects):
                for j in range(i + 1, n_objects):
                    a, b = objs[i]["bbox"], objs[j]["bbox"]
                    assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]


def test_train_and_eval_phrasings_share_no_template_or_relation_words():
    tables = [cap.RELATION_WORDS[r] for r in RELATIONS] + [
        cap.OBJECT_TEMPLATES, *cap.ANCHORED_LISTS.values(), cap.RELATION_SENTENCES, cap.ALT_TEMPLATES]
    for table in tables:
        assert table["train"] and table["eval"] and not set(table["train"]) & set(table["eval"])
    train_words = {w for v in cap.RELATION_WORDS.values() for w in v["train"]}
    assert not train_words & EVAL_WORDS


def test_recaption_binds_every_attribute_and_states_every_relation_truly(data):
    rel_sentence = re.compile(rf"^The {NP} (?:is|sits|is placed|appears) ({'|'.join(ALL_RELATION_WORDS)}) the {NP}\.$")
    for split, folder in (("train", "train"), ("eval", "val")):
        other = "eval" if split == "train" else "train"
        for rec in records(data / folder):
            scene, text = rec["scene"], rec["recaption"]
            sentences = re.findall(r"[^.]+\.", text)
            assert 2 <= len(sentences) <= 4 and " ".join(s.strip() for s in sentences) == text
            for o in scene["objects"]:  # colour and size bound to the shape in one phrase
                assert any(t.format(**o) in text for t in cap.OBJECT_TEMPLATES[split]), (o, text)
                assert not any(t.format(**o) in text for t in cap.OBJECT_TEMPLATES[other])
            stated, anchored = [], 0
            for sentence in sentences:
                m = rel_sentence.match(sentence.strip())
                if not m:  # the list: every object once in it, the first along the axis named again at its end
                    end = cap.axis_end(scene)
                    first = scene["objects"][cap.locations(scene).index(end)]
                    heads = [t.split("{first}")[0].format(objects=".+") for t in cap.ANCHORED_LISTS[end][split]]
                    assert any(re.fullmatch(h + rf"the {NP}" + re.escape(t.split("{first}")[1]), sentence.strip())
                               for h, t in zip(heads, cap.ANCHORED_LISTS[end][split])), (sentence, split)
                    z, c, sh = re.search(rf"the {NP} [^,]*\.$", sentence).groups()
                    assert (c, sh) == (first["colour"], first["shape"]) and z in (None, first["size"]), sentence
                    anchored += 1
                else:
                    z1, c1, s1, words, z2, c2, s2 = m.groups()
                    i, j = find(scene, c1, s1), find(scene, c2, s2)
                    assert words in [w for ws in cap.RELATION_WORDS.values() for w in ws[split]]
                    assert holds(scene, i, WORD_TO_RELATION[words], j), (sentence, scene)
                    assert z1 in (None, scene["objects"][i]["size"]) and z2 in (None, scene["objects"][j]["size"])
                    stated.append({i, j})
            assert sorted(map(sorted, stated)) == sorted(sorted({r["subject"], r["object"]}) for r in scene["relations"])
            assert anchored == 1, text
            assert not re.search(r"\b(it|they|them|its)\b", text, re.I)  # no sentence leans on another


def test_alt_text_never_states_a_relation_and_hides_binding(data):
    relation_tokens = {"left", "right", "above", "below", "under", "beneath", "over", "top", "next"}
    for rec in records(data / "train") + records(data / "val"):
        assert not set(re.findall(r"\w+", rec["alt_text"])) & relation_tokens, rec["alt_text"]
    fams = [sample_family(random.Random(f), 2, "train", 64) for f in range(300)]
    incomplete = wrong = 0
    for k, (base, colour_swapped, _, _) in enumerate(fams):
        text = cap.alt_text(base, random.Random(k), "train")
        words = set(re.findall(r"\w+", text))
        if {o["shape"] for o in base["objects"]} <= words:  # unless an object was dropped, binding is not in the text
            assert text == cap.alt_text(colour_swapped, random.Random(k), "train")
        truth = {o["colour"] for o in base["objects"]} | {o["shape"] for o in base["objects"]}
        wrong += bool(words & (set(COLOURS) | set(SHAPES)) - truth)
        incomplete += not truth <= words
    assert 0.10 < incomplete / 300 < 0.35 and 0 < wrong / 300 < 0.12
    assert np.mean([len(cap.alt_text(f[0], random.Random(0), "train").split()) for f in fams]) < 8


def test_sugarcrepe_files_parse_with_noncontiguous_keys_and_subset_negatives(data):
    scenes = {int(r["key"]): r["scene"] for r in records(data / "val")}
    folder = data / "probes" / "sugarcrepe"
    for subset in cap.SUGARCREPE_SUBSETS:
        items = json.loads((folder / f"{subset}.json").read_text())
        assert isinstance(items, dict) and len(items) == ARGS["probe_size"]
        keys = [int(k) for k in items]
        assert keys == sorted(keys) and keys != list(range(len(keys)))
        for item in items.values():
            assert set(item) == {"filename", "caption", "negative_caption"}
            assert re.fullmatch(r"\d{12}\.jpg", item["filename"]) and (folder / "images" / item["filename"]).exists()
            scene, pos, neg = scenes[int(item["filename"][:-4])], item["caption"], item["negative_caption"]
            assert pos != neg and pair_true(pos, scene), (subset, pos)
            pw, nw = pos.split(), neg.split()
            if subset in ("swap_att", "swap_obj"):
                assert sorted(pw) == sorted(nw) and not pair_true(neg, scene)
                kinds = set(COLOURS) | set(SIZES) if subset == "swap_att" else set(SHAPES)
                assert all(p == n or {p, n} <= kinds for p, n in zip(pw, nw))
            elif subset in ("replace_att", "replace_obj"):
                diff = [(p, n) for p, n in zip(pw, nw) if p != n]
                pool = COLOURS if subset == "replace_att" else SHAPES
                present = {o["colour" if subset == "replace_att" else "shape"] for o in scene["objects"]}
                assert len(pw) == len(nw) and len(diff) == 1 and diff[0][1] in pool and diff[0][1] not in present
            elif subset == "replace_rel":
                assert PAIR.match(pos).group(4) != "and" and not pair_true(neg, scene)
                assert WORD_TO_RELATION[PAIR.match(neg).group(4)] == INVERSE[WORD_TO_RELATION[PAIR.match(pos).group(4)]]
            elif subset == "add_att":
                assert not set(pw) & set(SIZES) and len(nw) == len(pw) + 1 and not pair_true(neg, scene)
                assert sorted(w for w in nw if w not in SIZES) == sorted(pw)
            else:
                assert neg.startswith(pos + " and a ")
                colour, shape = nw[-2:]
                assert find(scene, colour, shape) is None and all(o["shape"] != shape for o in scene["objects"])


def test_aro_files_have_true_captions_and_boxes_around_both_objects(data):
    scenes = {r["key"]: r["scene"] for r in records(data / "val")}
    folder = data / "probes" / "aro"
    for name in ("visual_genome_relation", "visual_genome_attribution"):
        rows = json.loads((folder / f"{name}.json").read_text())
        assert isinstance(rows, list) and len(rows) == ARGS["probe_size"]
        for row in rows:
            assert (folder / "images" / row["image_path"]).exists()
            scene = scenes[row["image_path"][:-4]]
            x, y, w, h = (row[k] for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
            true, false = row["true_caption"], row["false_caption"]
            nps = re.findall(rf"the {NP}", true)
            assert len(nps) == 2 and sorted(true.split()) == sorted(false.split()) and true != false
            for _, c, s in nps:
                bx, by, bw, bh = scene["objects"][find(scene, c, s)]["bbox"]
                assert x <= bx and y <= by and bx + bw <= x + w and by + bh <= y + h
            if name == "visual_genome_relation":
                words = re.search(rf" is ({'|'.join(ALL_RELATION_WORDS)}) the ", true).group(1)
                (_, c1, s1), (_, c2, s2) = nps
                assert words in EVAL_WORDS and row["relation_name"] == WORD_TO_RELATION[words] in RELATIONS
                assert holds(scene, find(scene, c1, s1), row["relation_name"], find(scene, c2, s2))
                assert false == f"the {c2} {s2} is {words} the {c1} {s1}"
            else:
                (_, c1, s1), (_, c2, s2) = nps
                assert row["attributes"] == [c1, c2] and false == f"the {c2} {s1} and the {c1} {s2}"


def test_winoground_pairs_use_same_words_and_each_caption_fits_its_image(data):
    val = {r["key"]: r["scene"] for r in records(data / "val")}
    pixels = {k: np.asarray(Image.open(io.BytesIO(files[f"{k}.jpg"])), dtype=float)
              for _, files in read_shards(data / "val") for k in (n[:-4] for n in files if n.endswith(".jpg"))}

    def scene_of(path: Path) -> dict:  # the val sample this PNG renders (JPEG noise only)
        img = np.asarray(Image.open(path).convert("RGB"), dtype=float)
        key, err = min(((k, np.abs(img - p).mean()) for k, p in pixels.items()), key=lambda t: t[1])
        assert err < 3
        return val[key]

    folder = data / "probes" / "winoground"
    lines = [json.loads(line) for line in (folder / "examples.jsonl").read_text().splitlines()]
    assert len(lines) == ARGS["probe_size"]
    assert Counter(line["collapsed_tag"] for line in lines) == {"Relation": 6, "Object": 6}
    for line in lines:
        assert set(line) == {"id", "image_0", "image_1", "caption_0", "caption_1", "tag", "secondary_tag",
                             "num_main_preds", "collapsed_tag"}
        c0, c1 = line["caption_0"], line["caption_1"]
        assert c0 != c1 and sorted(c0.split()) == sorted(c1.split())
        s0, s1 = scene_of(folder / "images" / f"{line['image_0']}.png"), scene_of(folder / "images" / f"{line['image_1']}.png")
        assert pair_true(c0, s0) and pair_true(c1, s1) and not pair_true(c1, s0) and not pair_true(c0, s1)


def test_docci_uses_whole_families_with_held_out_recaptions(data):
    val = {r["key"]: r for r in records(data / "val")}
    folder = data / "probes" / "docci"
    lines = [json.loads(line) for line in (folder / "docci_descriptions.jsonlines").read_text().splitlines()]
    assert len(lines) == 12 and all(line["split"] == "test" for line in lines)
    by_description = {r["recaption"]: r for r in val.values()}
    families = Counter()
    for line in lines:
        assert set(line) == {"example_id", "split", "image_file", "description"}
        assert (folder / "images" / line["image_file"]).exists()
        families[by_description[line["description"]]["family"]] += 1
    assert set(families.values()) == {4}


def test_generate_skips_when_manifest_matches_and_refuses_other_arguments(tmp_path):
    small = dict(ARGS, train_families=2, eval_families=2, probe_size=2)
    first = generate(tmp_path, **small)
    assert first["skipped"] is False and first["counts"]["train_samples"] == 16
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["args"] == small | {"min_objects": 2, "max_objects": 2, "shape_twins": 1, "plain_lists": 0}
    assert "format_version" in manifest
    shard = tmp_path / "train" / "shard-000000.tar"
    stamp = shard.stat().st_mtime_ns
    again = generate(tmp_path, **small)
    assert again["skipped"] is True and again["counts"] == first["counts"] and shard.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="image_size: 64 -> 32"):
        generate(tmp_path, **dict(small, image_size=32))
    redone = generate(tmp_path, **dict(small, image_size=32), overwrite=True)
    assert redone["skipped"] is False and Image.open(tmp_path / "probes" / "docci" / "images" / "test_00000.jpg").size == (32, 32)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="partial"):
        generate(tmp_path, **small)


def test_training_rebuilds_a_world_built_with_other_arguments_or_an_older_generator(tmp_path, monkeypatch, capsys):
    from helpers import DEFAULT

    from lit_compclip.config import load_config
    from lit_compclip.synth import manifest as world_manifest
    from lit_compclip.synth.plugin import prepare as ensure_synth

    out = tmp_path / "synth"
    cfg = load_config([DEFAULT], [f"synth.out_dir={out}", f"data.train_shards={out}/train", "data.val_shards=null",
                                  "synth.train_families=2", "synth.eval_families=2", "synth.probe_size=2"])
    ensure_synth(cfg)
    assert "building" in capsys.readouterr().out
    manifest = out / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    ensure_synth(cfg)  # built as configured: untouched, silent
    assert manifest.stat().st_mtime_ns == stamp and capsys.readouterr().out == ""
    cfg.synth.train_families = 3
    ensure_synth(cfg)
    assert "train_families: 2 -> 3" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["counts"]["train_samples"] == 24
    # the generator changed since
    monkeypatch.setattr(world_manifest, "FORMAT_VERSION", world_manifest.FORMAT_VERSION + 1)
    ensure_synth(cfg)
    assert "format_version" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["format_version"] == world_manifest.FORMAT_VERSION


@pytest.mark.parametrize("bad, match", [({"shard_size": 6}, "shard_size"), ({"min_objects": 1}, "min_objects"),
                                        ({"max_objects": 5}, "max_objects"), ({"train_families": 0}, "train_families")])
def test_bad_arguments_raise_one_line_value_errors(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match) as err:
        generate(tmp_path, **dict(ARGS, **bad))
    assert "\n" not in str(err.value) and not (tmp_path / "train").exists()


def scene(*objects, relation=None) -> dict:
    """Hand-built scene: objects as 'colour shape size' strings, one relation (subject, name, object)."""
    objs = [dict(zip(("colour", "shape", "size"), o.split()), bbox=[0, 0, 1, 1]) for o in objects]
    s, r, o = relation or (0, "left of", 1)
    return {"objects": objs, "relations": [{"subject": s, "relation": r, "object": o}]}


def test_hard_negative_stats_on_hand_built_batches():
    base = scene("red circle small", "blue square large")
    colour_swapped = scene("blue circle small", "red square large")
    position_swapped = scene("red circle small", "blue square large", relation=(0, "right of", 1))
    same_described_backwards = scene("blue square large", "red circle small", relation=(0, "right of", 1))
    other_shape = scene("red star small", "blue square large")
    unrelated = scene("green star small", "white cross small", relation=(0, "above", 1))
    none = {"binding_negative_frac": 0.0, "relation_negative_frac": 0.0, "shape_negative_frac": 0.0,
            "duplicate_frac": 0.0}
    assert hard_negative_stats([base, colour_swapped]) == none | {"binding_negative_frac": 1.0}
    assert hard_negative_stats([base, position_swapped, unrelated]) == none | {"relation_negative_frac": 2 / 3}
    assert hard_negative_stats([base, same_described_backwards, unrelated]) == none | {"duplicate_frac": 2 / 3}
    assert hard_negative_stats([base, other_shape, colour_swapped, unrelated]) == none | {
        "shape_negative_frac": 2 / 4, "binding_negative_frac": 2 / 4}
    for f in range(2):
        family = sample_family(random.Random(f), 2, "train", 64)
        # the both-swapped member is the base with its two shapes exchanged (a shape-only pair); with equal sizes
        # it is also the colour-swapped member moved (relation-only) and the position-swapped one shape-swapped
        same_size = family[0]["objects"][0]["size"] == family[0]["objects"][1]["size"]
        assert hard_negative_stats(family) == none | {"binding_negative_frac": 1.0,
                                                      "relation_negative_frac": 1.0 if same_size else 0.5,
                                                      "shape_negative_frac": 1.0 if same_size else 0.5}
    assert any(f[0]["objects"][0]["size"] != f[0]["objects"][1]["size"]
               for f in (sample_family(random.Random(f), 2, "train", 64) for f in range(2)))  # both cases seen
    rng = random.Random(0)
    family = sample_family(rng, 2, "train", 64)
    assert hard_negative_stats(family + shape_twin(family, rng)) == none | {
        "binding_negative_frac": 1.0, "relation_negative_frac": 1.0, "shape_negative_frac": 1.0}
    strangers = [sample_family(random.Random(f), 2, "train", 64)[0] for f in range(4)]
    assert hard_negative_stats(strangers) == none
    with pytest.raises(ValueError, match="at least one scene"):
        hard_negative_stats([])


@pytest.mark.parametrize("n_objects", [2, 3])
def test_recaption_locations_agree_with_positions(n_objects):
    for f in range(30):
        for scene in sample_family(random.Random(f), n_objects, "train", 64):
            where = cap.locations(scene)
            axis = 0 if scene["relations"][0]["relation"] in ("left of", "right of") else 1
            centre = [o["bbox"][axis] + o["bbox"][axis + 2] / 2 for o in scene["objects"]]
            first, last = ("left", "right") if axis == 0 else ("top", "bottom")
            assert where[centre.index(min(centre))] == first and where[centre.index(max(centre))] == last
            assert where.count("middle") == n_objects - 2
            assert cap.axis_end(scene) == first
            text = cap.recaption(scene, random.Random(f), "train")
            other_axis = ("top", "bottom", "upper", "highest", "above", "below", "under", "over") if axis == 0 else \
                ("left", "right")
            assert not any(re.search(rf"\b{w}", text) for w in other_axis), text  # never the other axis's words


def test_plain_lists_add_a_place_free_list_of_every_object_to_training_records_only(data, tmp_path):
    out = tmp_path / "plain"
    generate(out, **dict(ARGS, plain_lists=1))
    base = {r["key"]: r for split in ("train", "val") for r in records(data / split)}
    for split in ("train", "val"):
        for r in records(out / split):
            assert {k: v for k, v in r.items() if k != "plain_list"} == base[r["key"]]
            assert ("plain_list" in r) == (split == "train")
    places = ("left", "right", "above", "below", "top", "under", "most")
    firsts = Counter()
    for r in records(out / "train"):
        text = r["plain_list"]
        assert text.endswith(".") and not any(w in text for w in places) and len(split_sentences(text)) == 1
        for obj in r["scene"]["objects"]:  # every object, with its colour, shape and size
            assert obj["colour"] in text and obj["shape"] in text and obj["size"] in text
        firsts[text.lower().index(r["scene"]["objects"][0]["shape"]) == min(
            text.lower().index(o["shape"]) for o in r["scene"]["objects"])] += 1
    assert min(firsts.values()) > 0.25 * sum(firsts.values())  # the order is drawn, not the scene's
    with pytest.raises(ValueError, match="plain_lists must be 0 or 1"):
        generate(tmp_path / "x", **dict(ARGS, plain_lists=2))


def test_a_manifest_from_before_a_later_argument_still_matches_and_one_with_a_removed_argument_differs(data, tmp_path):
    from lit_compclip.synth.manifest import differs, world_args

    manifest = json.loads((data / "manifest.json").read_text())
    manifest["args"].pop("plain_lists")  # as format 8 worlds built before the option wrote it
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert differs(tmp_path, world_args(**ARGS)) == ""  # nothing to rebuild
    assert differs(tmp_path, world_args(**dict(ARGS, plain_lists=1))) == "plain_lists: 0 -> 1"
    # an argument the generator no longer has (a screen not kept): its world may hold other captions, so it is
    # rebuilt, never reused
    manifest["args"]["retired_option"] = 0.0
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert differs(tmp_path, world_args(**ARGS)) == "retired_option: 0.0 -> (no such argument)"
