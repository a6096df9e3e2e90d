"""scripts/shape_perception.py: its logistic probe against a closed-form case, its scenes, its CLI and its errors."""

import importlib.util

import pytest
import torch

from lit_compclip.synth.world import SHAPES

spec = importlib.util.spec_from_file_location("shape_perception", "scripts/shape_perception.py")
sp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sp)


def test_the_linear_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    centres = torch.eye(3, 8) * 6
    x = centres[y] + torch.randn(300, 8, generator=g)
    acc, confusion = sp.linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert acc > 0.95 and int(confusion.sum()) == 100 and int(confusion.trace()) == round(100 * acc)
    # labels unrelated to the features: held-out accuracy near chance (1/3)
    noise = torch.randn(300, 8, generator=g)
    acc, _ = sp.linear_probe(noise[:200], y[:200], noise[200:], y[200:])
    assert acc < 0.6


def test_one_object_scenes_are_reproducible_and_cover_every_shape():
    a, b = sp.one_object_scenes(60, seed=3), sp.one_object_scenes(60, seed=3)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert all(x.tobytes() == y.tobytes() for (_, x), (_, y) in zip(a, b))
    assert {s for s, _ in a} == set(range(len(SHAPES))) and a[0][1].size == (64, 64)


def test_main_prints_three_feature_rows_per_model_and_the_supervised_curve(tiny_ckpt, capsys):
    sp.main([str(tiny_ckpt), "--init", "--n-train", "24", "--n-test", "12", "--supervised", "2"])
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if "confused:" in line]
    assert len(rows) == 6 and sum("fresh weights" in r for r in rows) == 3
    assert [line.split()[2] for line in out if line.startswith("supervised")] == ["2"]


@pytest.mark.parametrize("args, words", [(["--n-train", "3"], "--n-train"), (["--supervised", "-1"], "--supervised")])
def test_bad_arguments_are_one_line_and_exit_2(tiny_ckpt, capsys, args, words):
    with pytest.raises(SystemExit) as e:
        sp.main([str(tiny_ckpt), *args])
    assert e.value.code == 2 and words in capsys.readouterr().err.splitlines()[-1]


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sp.main([str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "nope.ckpt" in err
