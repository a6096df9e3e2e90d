"""data.jpeg_draft: training JPEGs decoded at a reduced scale by Pillow (make bench-data measures its speed-up),
never below the size asked for, and only in training; null (the default) decodes as before, so no figure moves."""

import io

import pytest
from PIL import Image

from helpers import make_dm, write_shards
from lit_compclip.config import ConfigError, load_config
from lit_compclip.data.decode import Decode
from lit_compclip.data.captions import CaptionPicker
from lit_compclip.data.skips import SkipLog


def jpeg_sample(size, key="k0") -> dict:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize(size).save(buffer, "JPEG", quality=95)
    return {"__key__": key, "__url__": "mem", "jpg": buffer.getvalue(), "txt": b"a gradient"}


def decoded_size(draft, size=(1000, 600)):
    import random

    decode = Decode(CaptionPicker({"txt": 1.0}), SkipLog("train"), 0, jpeg_draft=draft)
    return decode.decode(jpeg_sample(size), random.Random(0))["image"].size


def test_a_large_jpeg_decodes_smaller_but_never_below_the_size_asked_for():
    assert decoded_size(None) == (1000, 600)
    assert decoded_size(237) == (500, 300)  # 1/2 scale: 1/4 would give 150 < 237 px
    assert decoded_size(100) == (250, 150)  # 1/4 scale
    assert decoded_size(700) == (1000, 600)  # no scale keeps both sides >= 700: full size
    assert decoded_size(237, size=(200, 180)) == (200, 180)  # already small: untouched


def test_only_training_decodes_reduced(tmp_path):
    folder = write_shards(tmp_path / "d", 1, 4)
    dm = make_dm(folder, folder, jpeg_draft=4)
    train_decode = [s for s in dm.train_dataloader().loader.dataset.pipeline if isinstance(s, Decode)]
    val_decode = [s for s in dm.val_dataloader().loader.dataset.pipeline if isinstance(s, Decode)]
    assert [d.jpeg_draft for d in train_decode] == [4] and [d.jpeg_draft for d in val_decode] == [None]
    assert len(list(dm.train_dataloader())) == 1  # and it trains: one batch of 4


@pytest.mark.parametrize("value", [0, -3])
def test_a_bad_value_is_one_line(value):
    with pytest.raises(ConfigError, match="config key 'data.jpeg_draft': must be >= 1 pixels"):
        load_config(["experiments/default.yaml"], [f"data.jpeg_draft={value}"])
