"""scripts/list_order.py: its scenes and texts, its similarities, its CLI and its errors."""

import importlib.util

import pytest
import torch

spec = importlib.util.spec_from_file_location("list_order", "scripts/list_order.py")
lo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lo)


def test_the_texts_name_the_object_at_the_start_of_the_axis_first():
    images, texts = lo.scenes_and_texts(8, seed=1)
    again, _ = lo.scenes_and_texts(8, seed=1)
    assert len(images) == 8 and all(a.tobytes() == b.tobytes() for a, b in zip(images, again))
    for start, end, in_order, reverse in zip(texts["start"], texts["end"], texts["in_order"], texts["reversed"]):
        assert in_order == f"{start} and {end}" and reverse == f"{end} and {start}" and start != end


class _Encoder:  # every image is [1, 0]; a text is [1, 0] when it names red first, else [1, 1]
    def encode_image(self, images):
        return torch.tensor([[1.0, 0.0]] * len(images))

    def encode_text(self, texts):
        return torch.tensor([[1.0, 0.0] if t.startswith("a red") else [1.0, 1.0] for t in texts])


def test_similarities_are_cosines_of_each_image_with_its_own_text():
    texts = {"start": ["a red circle", "a blue star"], "end": ["a blue star", "a red circle"]}
    sims = lo.similarities(_Encoder(), [None, None], texts)
    assert torch.allclose(sims["start"], torch.tensor([1.0, 0.5 ** 0.5], dtype=torch.float64))
    assert torch.allclose(sims["end"], torch.tensor([0.5 ** 0.5, 1.0], dtype=torch.float64))


def test_summary_reports_the_share_where_the_start_object_wins():
    sims = {"start": torch.tensor([0.9, 0.1]), "end": torch.tensor([0.5, 0.5]),
            "in_order": torch.tensor([0.8, 0.8]), "reversed": torch.tensor([0.1, 0.9])}
    line = lo.summary(sims)
    assert "start higher in 50.0%" in line and "start first higher in 50.0%" in line
    same = {k: torch.full((4,), 0.3) for k in sims}  # ties count as no preference
    assert "start higher in 0.0%" in lo.summary(same)


def test_main_prints_one_row_per_checkpoint(tiny_ckpt, capsys):
    lo.main([str(tiny_ckpt), str(tiny_ckpt), "--scenes", "6"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("6 held-out") and sum("start first higher in" in line for line in out) == 2


@pytest.mark.parametrize("args", [["--scenes", "0"], ["--scenes", "x"]])
def test_bad_arguments_are_one_line_and_exit_2(tiny_ckpt, capsys, args):
    with pytest.raises(SystemExit) as e:
        lo.main([str(tiny_ckpt), *args])
    assert e.value.code == 2 and "--scenes" in capsys.readouterr().err.splitlines()[-1]


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lo.main([str(tmp_path / "none.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "none.ckpt" in err[0]
