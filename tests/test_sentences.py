"""Sentence splitting and per-field sentence sampling: abbreviations, initials, decimals, URLs, quotes and line breaks
on hard sentences; only the fields data.sentence_sample names are sampled; and on every caption of the synthetic world
the splitter, and so every experiment's picks, are what the regex splitter of before gave (no figure moves)."""

import json
import random
import re
import tarfile
from pathlib import Path

import pytest

from lit_compclip.config import load_config
from lit_compclip.data.captions import CaptionPicker, sample_sentences, split_sentences
from lit_compclip.synth import generate

ROOT = Path(__file__).resolve().parents[1]
ISSUE = "Mr. Smith at 3.5 p.m. St. Louis! Really? yes"  # issue 35: the regex made the caption "St. yes" of it

HARD = [
    (ISSUE, ["Mr. Smith at 3.5 p.m.", "St. Louis!", "Really?", "yes"]),
    ("J. R. R. Tolkien wrote it. It is long.", ["J. R. R. Tolkien wrote it.", "It is long."]),
    ("Prof. J. R. R. Tolkien, Ph.D., wrote it. It is long.", ["Prof. J. R. R. Tolkien, Ph.D., wrote it.",
                                                             "It is long."]),
    ("A dog vs. a cat, e.g. a tabby. Prices rose 2.5% in Q1. OK", ["A dog vs. a cat, e.g. a tabby.",
                                                                   "Prices rose 2.5% in Q1.", "OK"]),
    ("Two people (approx. 30 years old) stand near a car, i.e. a sedan. The sky is clear.",
     ["Two people (approx. 30 years old) stand near a car, i.e. a sedan.", "The sky is clear."]),
    ("The U.S. team won. Mrs. Jones left at 5 a.m. on Jan. 3.", ["The U.S. team won.",
                                                                 "Mrs. Jones left at 5 a.m. on Jan. 3."]),
    ("See https://example.com/a.b?c=1. Visit www.example.com. Email a.b@c.org now.",
     ["See https://example.com/a.b?c=1.", "Visit www.example.com.", "Email a.b@c.org now."]),
    ('A wooden sign that reads "Open. Come in." hangs on a blue door. A black cat sleeps below it.',
     ['A wooden sign that reads "Open. Come in." hangs on a blue door.', "A black cat sleeps below it."]),
    ("He said \u201cStop.\u201d Then left.", ["He said \u201cStop.\u201d", "Then left."]),
    ("A cat (asleep). Then a dog [grey.] It barks.", ["A cat (asleep).", "Then a dog [grey.] It barks."]),
    ("A cat?! No, a fox...  It runs.", ["A cat?!", "No, a fox...", "It runs."]),
    ("The image shows:\n- a red car\n- a blue truck.\n\nA road", ["The image shows:", "- a red car",
                                                                  "- a blue truck.", "A road"]),
    ("  one line, no full stop  ", ["one line, no full stop"]),
    ("", []),
]


@pytest.mark.parametrize("text, sentences", HARD, ids=[t[:24] for t, _ in HARD])
def test_abbreviations_initials_decimals_urls_and_quotes_do_not_end_a_sentence(text, sentences):
    assert split_sentences(text) == sentences
    # nothing dropped or added: the sentences are the text, less the whitespace between them
    assert "".join(sentences).replace(" ", "") == re.sub(r"\s", "", text)


def test_sampling_the_issue_example_gives_whole_sentences():
    """The regex split it into six pieces ('Mr.', 'Smith at 3.5 p.m.', 'St.', 'Louis!', ...): 'St. yes' came out."""
    sentences = split_sentences(ISSUE)
    seen = set()
    for seed in range(200):
        kept = sample_sentences(ISSUE, 2, random.Random(seed))
        pair = tuple(s for s in sentences if s in kept)
        assert len(pair) == 2 and kept == " ".join(pair), kept
        seen.add(pair)
    assert len(seen) == 6  # every pair of the four sentences, in their order


def test_only_the_fields_sentence_sample_names_are_sampled():
    alt, recaption = ISSUE, "A man in a grey coat, Mr. Smith, stands at 3.5 m from the door. St. Louis's arch is " \
        "behind him. The sky is clear. A dog sits on the left."
    sample = {"txt": alt.encode(), "json": {"recaption": recaption, "caption": alt}}
    picker = CaptionPicker({"recaption": 1.0, "txt": 1.0}, {"recaption": 1, "caption": 2})  # caption: not read here
    picked = [picker(sample, random.Random(seed)) for seed in range(300)]
    assert alt in picked and picked.count(alt) > 100  # the alt-text stays whole
    rest = [p for p in picked if p != alt]
    assert set(rest) == set(split_sentences(recaption)) and len(split_sentences(recaption)) == 4
    # {} or None: every caption whole
    for off in ({}, None):
        whole = CaptionPicker({"recaption": 1.0}, off)
        assert {whole(sample, random.Random(seed)) for seed in range(20)} == {recaption}


@pytest.mark.parametrize("value, why", [
    (1, r"^sentence_sample = 1: give a mapping field -> k, e.g. \{'recaption': 1\} \(\{\} keeps whole captions\)$"),
    ({"recaption": 0}, r"^sentence_sample\['recaption'\] = 0: must be an int >= 1 \(leave the field out"),
    ({"recaption": True}, r"^sentence_sample\['recaption'\] = True: must be an int >= 1"),
    ({"recaption": "2"}, r"^sentence_sample\['recaption'\] = '2': must be an int >= 1"),
    ({"recaption": 1.0}, r"^sentence_sample\['recaption'\] = 1.0: must be an int >= 1")])
def test_a_bad_sentence_sample_is_one_line_naming_the_field(value, why):
    with pytest.raises(ValueError, match=why):
        CaptionPicker({"recaption": 1.0}, value)


# ------------------------------------------------------------------- the synthetic world's captions, as before

# The splitter of before (lit_compclip/data/captions.py up to 95e32a3), kept here as the reference: a sentence ended
# at . ! or ? (and any closing quotes or brackets) before whitespace, and at every line break.
_OLD_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")


def old_split(text: str) -> list[str]:
    parts, pos = [], 0
    for m in _OLD_END.finditer(text):
        parts.append(text[pos:m.start()] + m.group(0).rstrip())
        pos = m.end()
    parts.append(text[pos:])
    return [p.strip() for p in parts if p.strip()]


def old_pick(picker: CaptionPicker, k: int, sample: dict, rng: random.Random) -> str | None:
    """CaptionPicker's draw of before: data.sentence_sample was one int k, applied to every source picked."""
    found = picker.candidates(sample)
    if not found:
        return None
    names = list(found)
    name = rng.choices(names, weights=[picker.caption_fields[n] for n in names])[0]
    texts = found[name]
    text = texts[0] if len(texts) == 1 else rng.choice(texts)
    if k > 0:
        sentences = old_split(text)
        if len(sentences) > k:
            text = " ".join(sentences[i] for i in sorted(rng.sample(range(len(sentences)), k)))
        else:
            text = " ".join(sentences)
    return text


@pytest.fixture(scope="module")
def world_samples(tmp_path_factory) -> list[dict]:
    """Every sample ({"txt": bytes, "json": dict}) of a small world with 2 or 3 objects a scene (recaptions of 2 or 3
    sentences) and the place-free lists, training and validation shards both."""
    out = tmp_path_factory.mktemp("sentences") / "world"
    generate(out, train_families=6, eval_families=3, probe_size=2, shard_size=16, min_objects=2, max_objects=3,
             plain_lists=1, workers=1)
    samples = {}
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.rsplit(".", 1)
                data = tar.extractfile(member).read()
                sample = samples.setdefault((shard.parent.name, key), {})
                if ext == "txt":
                    sample["txt"] = data
                elif ext == "json":
                    sample["json"] = json.loads(data)
    return list(samples.values())


def test_every_synthetic_caption_splits_as_before(world_samples):
    counts = {}
    for sample in world_samples:
        texts = {"txt": sample["txt"].decode(), **{k: v for k, v in sample["json"].items() if isinstance(v, str)}}
        for field, text in texts.items():
            assert split_sentences(text) == old_split(text), (field, text)
            counts.setdefault(field, set()).add(len(old_split(text)))
    # what the world holds: recaptions of several sentences, one-sentence alt-texts and place-free lists
    assert counts["recaption"] == {2, 3}
    assert counts["txt"] == counts["alt_text"] == counts["plain_list"] == {1}


# Each experiment on the synthetic world and its data.sentence_sample before it became a mapping.
BEFORE = {"default.yaml": 1, "alt_text.yaml": 1, "alt_text_scratch.yaml": 1, "whole_captions.yaml": 0}


@pytest.mark.parametrize("experiment", sorted(BEFORE))
def test_every_experiment_picks_the_captions_it_picked_before(world_samples, experiment):
    data = load_config([str(ROOT / "experiments" / experiment)], []).data
    pickers = [data.caption_fields] + ([data.later_caption_fields] if data.later_caption_fields else [])
    sampled = 0
    for fields in pickers:
        picker = CaptionPicker(dict(fields), dict(data.sentence_sample))
        for i, sample in enumerate(world_samples):
            whole = {t for texts in picker.candidates(sample).values() for t in texts}
            for seed in range(3):
                got = picker(sample, random.Random(f"{seed}/{i}"))
                assert got == old_pick(picker, BEFORE[experiment], sample, random.Random(f"{seed}/{i}")), \
                    (experiment, sample["json"]["key"])
                sampled += got not in whole
    # the default trains on single sentences of its recaptions; the others on whole captions
    assert (sampled > 0) == (experiment == "default.yaml"), sampled
