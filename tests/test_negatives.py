"""Hard negatives: false captions from scene graphs and word swaps, the module's loss with them, and the stage-2 run
that fine-tunes from a checkpoint (init_from)."""

import logging
import os
import random
import re
import subprocess
import sys

import pytest
import torch
from helpers import DEFAULT, TINY_MODEL, assert_close_by_norm, close_by_norm, world_overrides

from lit_compclip.cli import main
from lit_compclip.config import load_config
from lit_compclip.data.captions import split_sentences
from lit_compclip.data.negatives import SOURCES, NegativeMaker, rule_negatives
from lit_compclip.losses import info_nce, info_nce_with_negatives
from lit_compclip.registry import resolve
from lit_compclip.synth import captions as cap
from lit_compclip.synth.negatives import (SCENE_KINDS, from_scene, scene_negative, scene_negative_sentences,
                                          scene_negatives)
from lit_compclip.synth.world import COLOURS, INVERSE, SHAPES, SIZES, relation_between, sample_family
from lit_compclip.training.module import CompClip, gather_varying_with_grad
from lit_compclip.training.run import train

# ---------------------------------------------------------------- an independent reader of scene captions


def _alt(words) -> str:
    """A regex alternation of `words`, longest first."""
    return "|".join(sorted(map(re.escape, words), key=len, reverse=True))


RELATIONS = {p: rel for rel, splits in cap.RELATION_WORDS.items() for ps in splits.values() for p in ps}
C, S, Z = _alt(COLOURS), _alt(SHAPES), _alt(SIZES)
NP = re.compile(rf"\b(?:a|the) (?:({Z}) )?(?:({C}) )?({S})(?: that is ({C}|{Z})(?: and ({C}|{Z}))?)?", re.I)
# 'Of <objects>, the <first> is the leftmost.': which end each template names, and where its first object begins
ANCHORED = [(re.compile(re.escape(t).replace(r"\{objects\}", "(?P<objects>.+)").replace(r"\{first\}", "(?P<first>.+)")),
             end) for end, splits in cap.ANCHORED_LISTS.items() for ts in splits.values() for t in ts]
RELATION_SENTENCE = re.compile(rf"(?P<s>.+?) (?:is|sits|is placed|appears) (?P<rel>{_alt(RELATIONS)}) (?P<o>.+)\.")


def read_np(match) -> dict:
    size, colour, shape, w1, w2 = match.groups()
    attrs = {"shape": shape.lower()}
    for word in (size, colour, w1, w2):
        if word:
            attrs["colour" if word in COLOURS else "size"] = word
    return attrs


def matching(scene, attrs):
    return [n for n, o in enumerate(scene["objects"]) if all(o[k] == v for k, v in attrs.items())]


def claims_hold(scene: dict, sentence: str) -> tuple[int, bool]:
    """(number of claims the sentence makes, whether all of them hold in the scene graph)."""
    axis = "h" if scene["relations"][0]["relation"] in ("left of", "right of") else "v"
    rel = RELATION_SENTENCE.fullmatch(sentence)
    if rel:
        s, o = read_np(NP.search(rel["s"])), read_np(NP.search(rel["o"]))
        pairs = [(a, b) for a in matching(scene, s) for b in matching(scene, o) if a != b]
        return 1, any(relation_between(scene["objects"], a, b, axis)["relation"] == RELATIONS[rel["rel"]]
                      for a, b in pairs)
    where = cap.locations(scene)
    end, m = next((end, m) for pattern, end in ANCHORED if (m := pattern.fullmatch(sentence)))
    listed, first = [read_np(n) for n in NP.finditer(m["objects"])], read_np(NP.search(m["first"]))
    return len(listed) + 1, (all(matching(scene, attrs) for attrs in listed)
                             and any(where[n] == end for n in matching(scene, first)))


def scenes(n=60):
    rng = random.Random(0)
    return [s for i in range(n) for s in sample_family(rng, 2 + i % 2, "train", 64)]  # 2- and 3-object scenes


# ---------------------------------------------------------------- scene negatives


def test_reader_finds_every_sentence_of_a_true_recaption_true():
    rng = random.Random(1)
    for scene in scenes(20):
        for sentence in split_sentences(cap.recaption(scene, rng, "train")):
            n, holds = claims_hold(scene, sentence)
            assert holds, sentence
    assert claims_hold(scenes(1)[0], "The red circle is over the red circle.")[1] is False  # the reader can say no


def test_every_sentence_of_a_scene_negative_is_false_for_its_scene():
    rng = random.Random(2)
    made = 0
    for scene in scenes():
        true = cap.recaption(scene, random.Random(0), "train")
        negatives = scene_negative_sentences(scene, rng, 4)
        assert len(negatives) >= 2 and len({" ".join(n) for n in negatives}) == len(negatives)
        for sentences in negatives:
            assert " ".join(sentences) != true
            for sentence in sentences:
                n, holds = claims_hold(scene, sentence)
                assert n > 0 and not holds, (scene, sentence)
                made += 1
    assert made > 400


def test_swap_colour_negative_binds_each_colour_to_the_other_shape():
    scene = scenes(1)[0]
    a, b = scene["objects"]
    for seed in range(10):
        text = " ".join(scene_negative(scene, "swap_colour", random.Random(seed)))
        stated = {(attrs["colour"], attrs["shape"]) for attrs in map(read_np, NP.finditer(text))}
        assert stated == {(b["colour"], a["shape"]), (a["colour"], b["shape"])}


def test_swap_relation_negative_states_the_inverse_relation():
    scene = scenes(1)[0]
    axis = "h" if scene["relations"][0]["relation"] in ("left of", "right of") else "v"
    for seed in range(10):
        sentence = next(s for s in scene_negative(scene, "swap_relation", random.Random(seed))
                        if RELATION_SENTENCE.fullmatch(s))
        rel = RELATION_SENTENCE.fullmatch(sentence)
        s, o = matching(scene, read_np(NP.search(rel["s"]))), matching(scene, read_np(NP.search(rel["o"])))
        assert RELATIONS[rel["rel"]] == INVERSE[relation_between(scene["objects"], s[0], o[0], axis)["relation"]]


def test_a_swap_with_nothing_to_swap_makes_nothing():
    scene = next(s for s in scenes() if len(s["objects"]) == 2 and s["objects"][0]["size"] == s["objects"][1]["size"])
    assert scene_negative(scene, "swap_size", random.Random(0)) == []
    assert all(scene_negative(scene, kind, random.Random(0)) for kind in SCENE_KINDS if kind != "swap_size")


def test_scene_negatives_use_only_the_train_phrasing():
    eval_only = [p for splits in cap.RELATION_WORDS.values() for p in splits["eval"]]
    train_templates = [re.escape(t).replace(r"\{objects\}", ".+").replace(r"\{subject\}", ".+")
                       .replace(r"\{relation\}", ".+").replace(r"\{object\}", ".+")
                       .replace(r"\{first\}", ".+")
                       for t in [t for ends in cap.ANCHORED_LISTS.values() for t in ends["train"]]
                       + list(cap.RELATION_SENTENCES["train"])]
    rng = random.Random(3)
    for scene in scenes(30):
        for text in scene_negatives(scene, rng, 4):
            assert not any(re.search(rf"\b{re.escape(p)}\b", text) for p in eval_only), text
            assert not re.search(rf"which is| size\b| in ({C})\b", text), text  # eval object templates
            for sentence in split_sentences(text):
                assert any(re.fullmatch(t, sentence) for t in train_templates), sentence


def test_from_scene_cuts_negatives_to_the_captions_sentence_count_and_needs_a_scene():
    scene = scenes(1)[0]
    one = from_scene({"scene": scene}, "There is a small red circle.", random.Random(0), 3)
    assert one and all(len(split_sentences(n)) == 1 for n in one)
    two = from_scene({"scene": scene}, "One. Two. Three.", random.Random(0), 3)
    assert all(len(split_sentences(n)) == 2 for n in two)
    assert from_scene({}, "a caption", random.Random(0), 1) == []
    assert from_scene({"scene": {"objects": scene["objects"][:1], "relations": []}}, "x", random.Random(0), 1) == []


# ---------------------------------------------------------------- rule negatives of real captions


def all_rule_negatives(caption):
    return set(rule_negatives(caption, random.Random(0), 20))


@pytest.mark.parametrize("caption, expected", [
    ("a red car next to a blue bike", {"a blue car next to a red bike",  # adjectives
                                       "a red bike next to a blue car",  # nouns
                                       "a blue bike next to a red car"}),  # noun phrases around the relation
    ("The cat is sitting on the mat.", {"The cat is sitting under the mat.", "The mat is sitting on the cat."}),
    ("A dog to the left of a tree", {"A dog to the right of a tree", "A tree to the left of a dog"}),
    ("A lamp above an old sofa", {"A lamp below an old sofa", "An old sofa above a lamp", "A sofa above an old lamp"}),
])
def test_rule_negatives_swap_words_of_hand_written_captions(caption, expected):
    assert all_rule_negatives(caption) == expected


def test_rule_negatives_move_capitals_and_articles_with_the_position():
    got = all_rule_negatives("Red apples in front of a green bowl.")
    assert "Green apples in front of a red bowl." in got
    assert "Red apples behind a green bowl." in got


@pytest.mark.parametrize("caption", ["a photo", "", "A dog and a cat.", "A red cup. A blue plate.", "A sunny day."])
def test_caption_where_no_rule_applies_yields_nothing(caption):
    assert rule_negatives(caption, random.Random(0), 3) == []  # a swap that keeps the meaning is no negative


def test_rule_negatives_keep_other_sentences_and_respect_k():
    caption = "A red cup sits on top of a wooden table. The wall is white."
    got = rule_negatives(caption, random.Random(0), 2)
    assert len(got) == 2 and len(set(got)) == 2
    assert all(n.endswith(" The wall is white.") and n != caption for n in got)
    assert rule_negatives(caption, random.Random(5), 2) == rule_negatives(caption, random.Random(5), 2)


def test_sources_registry_and_maker_errors():
    assert resolve(SOURCES, "scene", "source") is from_scene
    assert resolve(SOURCES, "rules", "source")({}, "a cat on a mat", random.Random(0), 5) == \
        rule_negatives("a cat on a mat", random.Random(0), 5)
    with pytest.raises(ValueError, match=r"unknown hard-negative source 'scen'.*'scene'.*\['rules', 'scene'\]"):
        NegativeMaker("scen")
    with pytest.raises(ValueError, match="per_sample"):
        NegativeMaker("rules", 0)


def test_the_data_layer_reaches_the_scene_source_by_name_only():
    """Rule negatives (and the registry) import no part of the synthetic world; asking for `scene` imports it then."""
    code = ("import random, sys; from lit_compclip.data.negatives import NegativeMaker; "
            "NegativeMaker('rules')({}, 'a red cup on a table', random.Random(0)); "
            "print(sorted(m for m in sys.modules if m.startswith('lit_compclip.synth'))); NegativeMaker('scene'); "
            "print('lit_compclip.synth.negatives' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]


def test_negative_maker_warns_once_for_samples_without_negatives(caplog):
    maker = NegativeMaker("rules", 1)
    with caplog.at_level(logging.WARNING, logger="lit_compclip.data.negatives"):
        assert maker({}, "a photo", random.Random(0), "k1", "s.tar") == []
        assert maker({}, "a picture", random.Random(0), "k2", "s.tar") == []
    assert len(caplog.records) == 1 and "'k1'" in caplog.text and "data/no_negative" in caplog.text


# ---------------------------------------------------------------- the module's loss


MODEL = {"embed_dim": 16, "init_logit_scale": 2.0, "max_logit_scale": 100.0,
         "image": {"img_size": 16, "patch_size": 8, "depth": 1, "width": 32, "heads": 2, "augment": False},
         "text": {"tower": "scratch", "width": 32, "layers": 1, "heads": 2, "max_seq_len": 16}}
OPTIM = {"lr": 1e-3, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": 0,
         "min_lr_ratio": 0.0}


def test_module_loss_adds_the_encoded_negatives_to_the_image_to_text_side(float64):
    torch.manual_seed(0)
    model = CompClip(MODEL, OPTIM, total_steps=1)
    batch = {"image": torch.randn(3, 3, 16, 16), "caption": ["a red circle", "a blue square", "a green star"]}
    negatives = ["a blue circle", "a red square on the left of a green star"]
    loss, image_emb, text_emb = model._loss({**batch, "negatives": negatives}, gather=False)
    expected = info_nce_with_negatives(image_emb, text_emb, model.encode_text(negatives), model.logit_scale)
    assert_close_by_norm(loss, expected, 1e-12)
    assert not close_by_norm(loss, info_nce(image_emb, text_emb, model.logit_scale), 1e-3)
    none, image_emb, text_emb = model._loss({**batch, "negatives": []}, gather=False)  # every sample got none
    assert_close_by_norm(none, info_nce(image_emb, text_emb, model.logit_scale), 1e-12)


def test_gather_varying_with_grad_is_the_identity_in_one_process():
    x = torch.randn(3, 4)
    assert gather_varying_with_grad(x) is x


GATHER_SCRIPT = """
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from lit_compclip.training.module import gather_varying_with_grad

def run(rank, cases, out):
    dist.init_process_group("gloo", init_method=f"file://{out}.rendezvous", rank=rank, world_size=2)
    for case, counts in enumerate(cases):
        x = torch.arange(counts[rank] * 2, dtype=torch.float64).reshape(-1, 2).add(100 * rank).requires_grad_()
        y = gather_varying_with_grad(x)
        (y * torch.arange(1, y.numel() + 1, dtype=torch.float64).reshape(y.shape)).sum().backward()
        torch.save({"y": y.detach(), "grad": x.grad}, f"{out}.{case}.{rank}")

if __name__ == "__main__":
    cases = [[int(c) for c in case.split(",")] for case in sys.argv[1].split(";")]
    mp.spawn(run, args=(cases, sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow
def test_gather_varying_with_grad_across_two_processes(tmp_path):
    cases = [(2, 0), (1, 3), (0, 0)]
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run([sys.executable, str(script), ";".join(",".join(map(str, c)) for c in cases), str(tmp_path / "out")],
                   check=True, timeout=240, env=env, stderr=subprocess.PIPE)
    for case, counts in enumerate(cases):
        rows = [torch.arange(n * 2, dtype=torch.float64).reshape(-1, 2) + 100 * r for r, n in enumerate(counts)]
        weights = torch.arange(1, 2 * sum(counts) + 1, dtype=torch.float64).reshape(-1, 2)
        for rank in range(2):
            got = torch.load(tmp_path / f"out.{case}.{rank}")
            assert torch.equal(got["y"], torch.cat(rows))  # every rank sees all rows in rank order
            start = sum(counts[:rank])
            # each rank's gradient sums both ranks' losses over its own rows (DDP's averaging comes later)
            expected = 2 * weights[start:start + counts[rank]]
            assert (got["grad"] is None and counts[rank] == 0) or torch.equal(got["grad"], expected)


# ---------------------------------------------------------------- stage 2: init_from + hard negatives


def tiny_args(world, tmp_path, *more):
    return [*world_overrides(world), *TINY_MODEL, "probes.suites={}", "data.val_shards=null",
            f"run_dir={tmp_path}/run", *more]


def test_fine_tuning_starts_from_the_checkpoints_weights_with_a_fresh_step_count(world, tiny_checkpoint, tmp_path):
    # lr 0: the weights must stay exactly the loaded ones
    cfg = load_config([DEFAULT], tiny_args(world, tmp_path, f"init_from={tiny_checkpoint}", "data.hard_negatives.source=scene",
                                    "trainer.max_steps=2", "trainer.log_every_n_steps=1", "optim.lr=0",
                                    "optim.text_lr=null"))  # null: the text layers' rate is lr, 0 too
    run = train(cfg)["run_dir"]
    after = torch.load(os.path.join(run, "checkpoints", "last.ckpt"), weights_only=False)
    before = torch.load(tiny_checkpoint, weights_only=False)
    assert after["global_step"] == 2  # not 50 + 2: weights only, no resumed step or schedule
    assert after["state_dict"].keys() == before["state_dict"].keys()
    # every tensor, buffers included: the default stem's GroupNorm keeps no running statistics
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    rows = [line.split(",") for line in open(os.path.join(run, "metrics.csv")).read().splitlines()]
    column = lambda name: [float(r[rows[0].index(name)]) for r in rows[1:] if r[rows[0].index(name)]]  # noqa: E731
    assert column("train/negatives_per_sample") == [1.0, 1.0]  # every synthetic sample got its one negative
    assert column("data/no_negative") == [0.0, 0.0]


@pytest.mark.parametrize("init_from, message", [
    ("{tmp}/none.ckpt", "init_from: checkpoint '{tmp}/none.ckpt' not found"),
    ("{tmp}/corrupt.ckpt", "cannot be read"),
    ("{ckpt}", "does not fit the configured model (2 weight(s) of another shape, e.g. 'image.proj.weight'"),
])
def test_bad_init_from_stops_with_one_line_before_a_run_folder_exists(world, tiny_checkpoint, tmp_path, capsys,
                                                                      init_from, message):
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    fill = lambda s: s.format(tmp=tmp_path, ckpt=tiny_checkpoint)  # noqa: E731
    args = tiny_args(world, tmp_path, f"init_from={fill(init_from)}", "model.embed_dim=16")
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # above it, maybe the text tower's loading progress bars
    assert fill(message) in err[-1] and sum("error" in line for line in err) == 1, err
    assert not (tmp_path / "run").exists()


def test_hard_negative_config_is_checked_before_anything_is_built():
    from lit_compclip.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.hard_negatives.source.*'rules'.*choose one of \['rules', 'scene'\]"):
        load_config([DEFAULT], ["data.hard_negatives.source=rule"])
    with pytest.raises(ConfigError, match="data.hard_negatives.per_sample"):
        load_config([DEFAULT], ["data.hard_negatives.per_sample=0"])
    assert dict(load_config(["experiments/hard_negatives.yaml"]).data.hard_negatives) == \
        {"source": "scene", "per_sample": 1}
