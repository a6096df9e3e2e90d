"""scripts/diagnose_shapes.py: Winoground's group rules on one 2x2, the shape-swapped twins it renders, its CLI."""

import importlib.util
import random

import pytest
import torch

spec = importlib.util.spec_from_file_location("diagnose_shapes", "scripts/diagnose_shapes.py")
ds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ds)


def test_group_scores_follow_winogrounds_rules():
    assert ds.group_scores(torch.tensor([[0.9, 0.1], [0.2, 0.8]])) == (2, 2, True)
    # image 0 prefers the wrong caption; caption 0 still prefers image 0 (0.5 > 0.2), caption 1 image 1
    assert ds.group_scores(torch.tensor([[0.5, 0.6], [0.2, 0.8]])) == (1, 2, False)
    # one caption liked by both images: every image picks it, so text 1 of 2 and image 1 of 2
    assert ds.group_scores(torch.tensor([[0.3, 0.9], [0.1, 0.8]])) == (1, 1, False)
    assert ds.group_scores(torch.zeros(2, 2)) == (0, 0, False)  # ties are wrong


@pytest.mark.parametrize("seed", range(20))
def test_twin_swaps_only_the_shapes_and_the_captions_keep_the_colour_order(seed):
    a, b, ta, tb = ds.twin_scenes(random.Random(seed), ("diamond", "triangle"))
    (oa1, oa2), (ob1, ob2) = a["objects"], b["objects"]
    assert {oa1["shape"], oa2["shape"]} == {"diamond", "triangle"}
    assert (ob1["shape"], ob2["shape"]) == (oa2["shape"], oa1["shape"])
    assert [{**o, "shape": None} for o in a["objects"]] == [{**o, "shape": None} for o in b["objects"]]
    assert ta == f"a {oa1['colour']} {oa1['shape']} and a {oa2['colour']} {oa2['shape']}"
    assert tb == f"a {oa1['colour']} {oa2['shape']} and a {oa2['colour']} {oa1['shape']}"
    boxes = [o["bbox"] for o in a["objects"]]
    assert all(0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 for x, y, w, h in boxes)
    (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes
    assert x1 + w1 <= x2 or y1 + h1 <= y2  # side by side or one above the other, never overlapping


def test_parse_pairs_defaults_to_every_pair_and_refuses_unknown_shapes():
    assert len(ds.parse_pairs(None)) == 15
    assert ds.parse_pairs("cross-diamond, circle-star") == [("cross", "diamond"), ("circle", "star")]
    for bad in ("cross-hexagon", "cross", "cross-cross"):
        with pytest.raises(ValueError, match="--pairs"):
            ds.parse_pairs(bad)


def test_main_prints_a_row_per_pair_with_scores_in_range(tiny_ckpt, capsys):
    ds.main([str(tiny_ckpt), "--n", "3", "--pairs", "diamond-triangle,circle-star"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(r[0] for r in rows) == ["circle-star", "diamond-triangle"]
    for r in rows:
        assert all(0 <= float(v.rstrip("%")) <= 100 for v in r[1:4])
        assert all(-1 <= float(v) <= 1 + 1e-9 for v in r[4:6])


@pytest.mark.parametrize("args, words", [(["--pairs", "cross-hexagon"], "--pairs"), (["--n", "0"], "--n 0")])
def test_bad_arguments_are_one_line_and_exit_2(tiny_ckpt, capsys, args, words):
    with pytest.raises(SystemExit) as e:
        ds.main([str(tiny_ckpt), *args])
    assert e.value.code == 2 and words in capsys.readouterr().err.splitlines()[-1]


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ds.main([str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "nope.ckpt" in err
