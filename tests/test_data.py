"""Tests for lit_compclip.data: caption picking, shard specs and the WebDataset datamodule on tiny shards."""

import io
import logging
import random
from collections import Counter

import lightning
import pytest
import torch
from PIL import Image

from lit_compclip.data.captions import CaptionPicker, split_sentences
from lit_compclip.training.datamodule import WebDataModule, expand_shards
from lit_compclip.data.passes import group_units
from helpers import good, jpeg, make_dm, tfm, write_shard, write_shards

# ---------------------------------------------------------------- helpers


def noisy_png(size=(64, 64), seed=0) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3)).save(buf, "PNG")
    return buf.getvalue()


def keys_of(batches):
    return [k for b in batches for k in b["key"]]


def skips_of(batches, loader=None) -> dict:
    """The batches' skip counts by reason, plus what `loader` received after its last batch."""
    total = sum((Counter(b["skipped"]) for b in batches), Counter())
    return dict(total + Counter(loader.take_held() if loader is not None else {}))


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


# ---------------------------------------------------------------- captions


def test_caption_picker_draws_fields_in_proportion_to_weights():
    picker = CaptionPicker({"recaption": 4.0, "alt_text": 1.0})  # normalised to 0.8 / 0.2
    sample = {"txt": "web", "json": {"recaption": "dense", "alt_text": "short"}}
    rng = random.Random(0)
    counts = Counter(picker(sample, rng) for _ in range(5000))
    assert set(counts) == {"dense", "short"}
    assert abs(counts["dense"] / 5000 - 0.8) < 0.03


def test_caption_picker_renormalises_over_present_fields():
    picker = CaptionPicker({"txt": 1.0, "alt_text": 1.0, "recaption": 2.0})
    sample = {"txt": "web", "json": {"alt_text": "short", "recaption": "   "}}  # recaption blank -> absent
    rng = random.Random(1)
    counts = Counter(picker(sample, rng) for _ in range(4000))
    assert set(counts) == {"web", "short"}
    assert abs(counts["web"] / 4000 - 0.5) < 0.04


def test_caption_picker_returns_none_when_no_field_present():
    picker = CaptionPicker({"recaption": 1.0})
    assert picker({"txt": "web", "json": {"alt_text": "x"}}, random.Random(0)) is None


def test_caption_picker_list_field_yields_one_of_its_items():
    picker = CaptionPicker({"long": 1.0})
    got = {picker({"json": {"long": ["a", "b", ""]}}, random.Random(i)) for i in range(50)}
    assert got == {"a", "b"}


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), "high"])
def test_caption_picker_rejects_bad_weight_naming_the_field(weight):
    with pytest.raises(ValueError, match="alt_text"):
        CaptionPicker({"recaption": 1.0, "alt_text": weight})


def test_split_sentences_keeps_punctuation_and_order():
    assert split_sentences('A red cube. "Is it big?" Yes!\nA blue ball') == \
        ["A red cube.", '"Is it big?"', "Yes!", "A blue ball"]


def test_sentence_sampling_keeps_order_and_at_most_k_sentences():
    text = " ".join(f"Sentence {i}." for i in range(8))
    picker = CaptionPicker({"txt": 1.0}, sentence_sample={"txt": 3})
    rng = random.Random(0)
    subsets = set()
    for _ in range(200):
        idx = [int(s.split()[1].rstrip(".")) for s in split_sentences(picker({"txt": text}, rng))]
        assert len(idx) == 3 and idx == sorted(idx)
        subsets.add(tuple(idx))
    assert len(subsets) > 20  # random subsets, not always the first three
    assert picker({"txt": "Only one. Two."}, rng) == "Only one. Two."


# ---------------------------------------------------------------- shard specs


def test_expand_shards_directory_braces_and_double_colon(tmp_path):
    write_shards(tmp_path / "a", 3, 1)
    write_shards(tmp_path / "b", 2, 1)
    a = [str(tmp_path / "a" / f"{i:06d}.tar") for i in range(3)]
    assert expand_shards(str(tmp_path / "a")) == a
    assert expand_shards(str(tmp_path / "a" / "{000000..000002}.tar")) == a
    both = expand_shards(f"{tmp_path / 'b'}::{tmp_path / 'a' / '000001.tar'}::https://host/x-{{0..1}}.tar")
    assert both == [str(tmp_path / "b" / "000000.tar"), str(tmp_path / "b" / "000001.tar"), a[1],
                    "https://host/x-0.tar", "https://host/x-1.tar"]


def test_expand_shards_missing_local_spec_names_it(tmp_path):
    spec = str(tmp_path / "nope" / "{0..3}.tar")
    with pytest.raises(FileNotFoundError, match="nope"):
        expand_shards(spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        expand_shards(str(tmp_path / "empty"))


# ---------------------------------------------------------------- streams


@pytest.mark.parametrize("num_workers", [0, 2])
def test_full_epoch_yields_every_good_sample_exactly_once(tmp_path, num_workers):
    folder = write_shards(tmp_path / "d", 4, 6)  # 24 samples, 12 per worker with 2 workers: no partial batch
    expected = sorted(f"s{s}_{i:03d}" for s in range(4) for i in range(6))
    dm = make_dm(folder, folder, num_workers=num_workers)
    train = list(dm.train_dataloader())
    assert sorted(keys_of(train)) == expected
    assert all(len(b["key"]) == 4 for b in train)
    val = list(dm.val_dataloader())
    assert sorted(keys_of(val)) == expected
    for batch in val:
        assert batch["caption"] == [f"caption of {k}" for k in batch["key"]]


def test_a_pass_cut_short_stops_its_workers_when_the_data_module_closes(tmp_path):
    """A step limit or limit_val_batches leaves a pass suspended; its workers stop at teardown (as fit ends), or when
    the loader starts its next pass, not at some later garbage collection."""
    import multiprocessing

    folder = write_shards(tmp_path / "d", 4, 8)
    dm = make_dm(folder, folder, num_workers=2)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    next(iter(train)), next(iter(val))
    assert len(multiprocessing.active_children()) == 4
    next(iter(train))  # a new pass: the earlier one's two workers stop, its own two start
    assert len(multiprocessing.active_children()) == 4
    dm.teardown("fit")
    assert multiprocessing.active_children() == []
    assert len(list(train)) == 8  # a closed loader still reads whole passes
    assert multiprocessing.active_children() == []


def test_transforms_are_applied_per_stream(tmp_path):
    folder = write_shards(tmp_path / "d", 1, 6)
    dm = make_dm(folder, folder, batch_size=3)
    train_batch = next(iter(dm.train_dataloader()))
    val_batch = next(iter(dm.val_dataloader()))
    assert train_batch["image"].shape == (3, 3, 16, 16) and train_batch["image"].dtype == torch.float32
    assert val_batch["image"].shape == (3, 3, 12, 12)


def test_validation_keeps_final_partial_batch_and_training_drops_it(tmp_path):
    folder = write_shards(tmp_path / "d", 1, 10)
    dm = make_dm(folder, folder, batch_size=4)
    assert [len(b["key"]) for b in dm.val_dataloader()] == [4, 4, 2]
    assert [len(b["key"]) for b in dm.train_dataloader()] == [4, 4]


def test_same_seed_gives_same_batches_and_other_seed_differs(tmp_path):
    folder = write_shards(tmp_path / "d", 3, 8)
    picks = {"txt": 1.0, "alt_text": 1.0}
    runs = [[(b["key"], b["caption"]) for b in make_dm(folder, caption_fields=picks, seed=s).train_dataloader()]
            for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_epochs_differ_in_order(tmp_path):
    folder = write_shards(tmp_path / "d", 3, 8)
    loader = make_dm(folder).train_dataloader()
    first, second = keys_of(loader), keys_of(loader)
    assert sorted(first) == sorted(second) and first != second


def test_later_caption_fields_take_over_from_their_epoch(tmp_path, caplog):
    # a caption curriculum: epochs 1-2 read the .txt, epoch 3 on the json field `later` (a sample without it is a
    # counted skip, never a silent fallback)
    folder = write_shards(tmp_path / "d", 2, 8, later="the later caption")
    write_shard(folder / "000002.tar", [good("no_later")])
    loader = make_dm(folder, later_caption_fields={"later": 1.0}, later_epoch=3, batch_size=1).train_dataloader()
    epochs = [list(loader) for _ in range(4)]
    for e, batches in enumerate(epochs):
        captions = [c for b in batches for c in b["caption"]]
        if e < 2:
            assert len(captions) == 17 and all(c.startswith("caption of ") for c in captions)
        else:
            assert captions == ["the later caption"] * 16 and skips_of(batches, loader) == {"no_caption": 1}
    with pytest.raises(ValueError, match="later_epoch = 1: must be an int >= 2"):
        make_dm(folder, later_caption_fields={"later": 1.0}, later_epoch=1)
    with pytest.raises(ValueError, match="caption_fields is empty"):
        make_dm(folder, later_caption_fields={})


def write_bad_shards(folder):
    folder.mkdir()
    truncated_image = noisy_png()
    write_shard(folder / "000000.tar", [
        good("ok_a"),
        {"__key__": "corrupt_jpeg", "jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg", "txt": "x", "json": {}},
        good("ok_b"),
        {"__key__": "bad_json", "jpg": jpeg(), "txt": "x", "json": b"{not json"},
        {"__key__": "no_caption", "jpg": jpeg(), "json": {"other": 1}},
        {"__key__": "no_image", "txt": "a caption without its image", "json": {}},
        good("ok_c"),
    ])
    full = write_shard(folder / "000001.tar", [good("ok_d"), good("ok_e"),
                                               {"__key__": "cut", "png": truncated_image, "txt": "x"}, good("lost")])
    data = open(full, "rb").read()
    with open(full, "wb") as f:  # cut the tar in the middle of the third sample's image
        f.write(data[:data.find(truncated_image) + len(truncated_image) // 2])
    return {"ok_a", "ok_b", "ok_c", "ok_d", "ok_e"}


def test_bad_samples_and_truncated_tar_are_skipped_counted_and_logged(tmp_path, caplog):
    good_keys = write_bad_shards(tmp_path / "bad")
    dm = make_dm(tmp_path / "bad", tmp_path / "bad", batch_size=1)
    with caplog.at_level(logging.WARNING, logger="lit_compclip.training.datamodule"):
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            caplog.clear()
            batches = list(loader)
            assert sorted(keys_of(batches)) == sorted(good_keys)
            assert skips_of(batches) == {"bad_image": 1, "bad_json": 1, "no_caption": 1, "no_image": 1,
                                         "truncated_shard": 1}
            text = caplog.text
            for key, reason in [("corrupt_jpeg", "bad_image"), ("bad_json", "bad_json"),
                                ("no_caption", "no_caption"), ("no_image", "no_image")]:
                assert f"'{key}' of {tmp_path / 'bad' / '000000.tar'}: {reason}" in text
            assert f"shard of {tmp_path / 'bad' / '000001.tar'}: truncated_shard (cut short: the file ends inside " \
                   f"member 'cut.png'; 2 samples read" in text


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_skip_reaches_a_batch_even_after_the_last_full_batch(tmp_path, num_workers):
    # 10 good samples per shard in batches of 4: 2 are left over (dropped), and broken samples after the 8th good
    # one come after the worker's last batch
    folder = tmp_path / "d"
    folder.mkdir()
    for s in range(2):
        samples = [good(f"s{s}_{i}") for i in range(10)]
        samples += [{"__key__": f"s{s}_tail{j}", "jpg": b"garbage", "txt": "t"} for j in range(3)]
        write_shard(folder / f"{s}.tar", samples[:3] + [{"__key__": f"s{s}_head", "txt": "no image"}] + samples[3:])
    loader = make_dm(folder, num_workers=num_workers, shuffle_buffer=0).train_dataloader()
    batches = list(loader)
    assert len(batches) == (4 if num_workers == 2 else 5)  # one stream of 20 good samples makes 5 batches
    assert skips_of(batches) == {"bad_image": 6, "no_image": 2} and loader.take_held() == {}


def test_a_worker_that_makes_no_batch_still_reports_its_skips(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_shard(folder / "0.tar", [good(f"a{i}") for i in range(8)])
    # the second worker's shard: 2 broken samples and fewer good ones than a batch
    write_shard(folder / "1.tar", [good("b0"), {"__key__": "b1", "jpg": b"junk", "txt": "t"}, good("b2"),
                                   {"__key__": "b3", "jpg": jpeg(), "json": b"{nope"}])
    for shuffle in (False, True):  # the marker comes before or after worker 0's last batch
        loader = make_dm(folder, num_workers=2, shard_shuffle=shuffle, shuffle_buffer=0).train_dataloader()
        batches = list(loader)
        assert sorted(keys_of(batches)) == [f"a{i}" for i in range(8)]
        assert skips_of(batches, loader) == {"bad_image": 1, "bad_json": 1}
        assert loader.take_held() == {}  # handed out once


def test_skip_warnings_stop_after_ten_per_reason(tmp_path, caplog):
    write_shard(tmp_path / "x.tar", [{"__key__": f"k{i}", "jpg": b"garbage", "txt": "t"} for i in range(15)]
                + [good("fine")])
    dm = make_dm(tmp_path / "x.tar", batch_size=1)
    with caplog.at_level(logging.WARNING, logger="lit_compclip.training.datamodule"):
        batches = list(dm.train_dataloader())
    assert keys_of(batches) == ["fine"] and batches[0]["skipped"] == {"bad_image": 15}
    assert sum("bad_image (" in r.message for r in caplog.records) == 10
    assert sum("further 'bad_image' skips counted only" in r.message for r in caplog.records) == 1


def test_stream_with_no_readable_sample_is_an_error(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(ValueError, match="no train batch came out"):
        list(make_dm(tmp_path / "junk.tar").train_dataloader())


def test_group_key_keeps_families_in_one_batch_under_shuffling(tmp_path):
    folder = tmp_path / "fam"
    folder.mkdir()
    for s in range(2):  # 2 shards x 12 families of 2 siblings, written next to each other
        write_shard(folder / f"{s}.tar", [good(f"f{s}_{f}_{j}", family=f"{s}-{f}") for f in range(12) for j in range(2)])

    def families_split(group_key):
        batches = list(make_dm(folder, batch_size=4, shuffle_buffer=100, group_key=group_key).train_dataloader())
        assert len(keys_of(batches)) == 48
        where = {}
        for i, batch in enumerate(batches):
            for key in batch["key"]:
                where.setdefault(key.rsplit("_", 1)[0], set()).add(i)
        return sum(len(b) > 1 for b in where.values())

    assert families_split("family") == 0
    assert families_split(None) > 5  # a plain shuffle scatters siblings


def test_group_units_merges_equal_neighbours_only():
    metas = [b'{"family": 1}', b'{"family": 1}', b"{}", b"{}", b'{"family": 2}', b"{bad", b'{"family": 1}',
             b'{"family": 1}', b'{"family": 1}']
    units = group_units([{"json": m} for m in metas] + [{"txt": b"no json"}], "family")
    assert [len(u) for u in units] == [2, 1, 1, 1, 1, 3, 1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_samples_per_epoch_gives_exact_number_of_batches(tmp_path, num_workers):
    folder = write_shards(tmp_path / "d", 4, 6)  # 24 samples: 40 per epoch needs more than one pass
    loader = make_dm(folder, samples_per_epoch=40, num_workers=num_workers).train_dataloader()
    assert len(loader) == 10
    assert [len(list(loader)) for _ in range(2)] == [10, 10]
    resampled = make_dm(folder, samples_per_epoch=18, resampled=True, shard_shuffle=False,
                        num_workers=num_workers).train_dataloader()
    assert len(list(resampled)) == len(resampled) == 4


def test_samples_per_epoch_is_divided_by_world_size(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "d", 4, 6)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = make_dm(folder, samples_per_epoch=40).train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    first_pass = keys_of(batches)[:12]  # then the rank's stream is read again, reshuffled
    shards = {k.split("_")[0] for k in first_pass}
    assert len(shards) == 2 and sorted(first_pass) == sorted(f"{s}_{i:03d}" for s in shards for i in range(6))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_read_disjoint_shares_that_make_up_the_whole_epoch(tmp_path, monkeypatch, num_workers):
    # 32 samples, the 4 shards shuffled per epoch then dealt to ranks (and to each rank's workers). Whole batches per
    # worker: a worker's partial batch is dropped, and the epoch would then go on into a reshuffled second pass.
    folder = write_shards(tmp_path / "d", 4, 8)
    expected = sorted(f"s{s}_{i:03d}" for s in range(4) for i in range(8))
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        loader = make_dm(folder, samples_per_epoch=32, num_workers=num_workers).train_dataloader()
        shares[rank] = [keys_of(loader) for _ in range(2)]  # epochs 0 and 1: other shard orders
    for epoch in (0, 1):
        mine, theirs = shares[0][epoch], shares[1][epoch]
        assert len(mine) == len(theirs) == 16 and not set(mine) & set(theirs)
        assert sorted(mine + theirs) == expected
    assert shares[0][0] != shares[0][1]  # the split moves with the epoch's shuffle, still a partition


def test_resampled_without_samples_per_epoch_is_an_error(tmp_path):
    folder = write_shards(tmp_path / "d", 1, 2)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        make_dm(folder, resampled=True)


def test_multi_process_without_samples_per_epoch_is_an_error(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "d", 2, 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="data.samples_per_epoch"):
        make_dm(folder).train_dataloader()


def test_fewer_shards_than_workers_reduces_workers(tmp_path, caplog):
    folder = write_shards(tmp_path / "d", 1, 8)
    dm = make_dm(folder, folder, num_workers=3)
    with caplog.at_level(logging.INFO, logger="lit_compclip.training.datamodule"):
        loader = dm.val_dataloader()
    assert sorted(keys_of(loader)) == [f"s0_{i:03d}" for i in range(8)]
    assert "1 loader workers instead of 3" in caplog.text


class _TinyModule(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(len(batch["caption"]))
        return self.layer(batch["image"].mean(dim=(2, 3))).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_runs_fixed_length_epochs(tmp_path):
    folder = write_shards(tmp_path / "d", 2, 6)
    dm = WebDataModule(str(folder), None, {"txt": 1.0}, {}, 4, 0, 10, True, False, 16, None, 0, tfm(8), tfm(8))
    model = _TinyModule()
    trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert model.seen == [4] * 8 and trainer.num_training_batches == 4


# ---------------------------------------------------------------- hard negatives


def scene_of(i):
    """A two-object synthetic scene graph (as the synthetic shards' .json `scene` holds it)."""
    from lit_compclip.synth.world import sample_family

    return sample_family(random.Random(i), 2, "train", 64)[0]


def test_training_samples_carry_scene_negatives_and_samples_without_are_counted(tmp_path, caplog):
    folder = tmp_path / "d"
    folder.mkdir()
    samples = [good(f"k{i}", "There is a shape. It is somewhere.", **({"scene": scene_of(i)} if i % 3 else {}))
               for i in range(12)]
    write_shard(folder / "0.tar", samples)
    dm = make_dm(folder, folder, hard_negatives={"source": "scene", "per_sample": 2})
    with caplog.at_level(logging.WARNING, logger="lit_compclip.data.negatives"):
        batches = list(dm.train_dataloader())
    assert sum(b["no_negative"] for b in batches) == 4  # k0, k3, k6, k9 have no scene
    assert sum(len(b["negatives"]) for b in batches) == 8 * 2
    assert all(len(split_sentences(n)) == 2 for b in batches for n in b["negatives"])  # as long as the caption
    assert sum("no hard negative from source 'scene'" in r.message for r in caplog.records) == 1  # warned once
    assert all("negatives" not in b for b in dm.val_dataloader())  # validation scores true captions only


def test_rule_negatives_come_from_the_chosen_caption_and_keep_the_caption_stream(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_shard(folder / "0.tar", [good(f"k{i}", f"a red car next to a blue bike number{i}") for i in range(8)])
    plain = list(make_dm(folder, caption_fields={"txt": 1.0}).train_dataloader())
    batches = list(make_dm(folder, hard_negatives={"source": "rules", "per_sample": 1}).train_dataloader())
    assert [b["caption"] for b in batches] == [b["caption"] for b in plain]  # negatives draw from their own rng
    for batch in batches:
        assert batch["no_negative"] == 0 and len(batch["negatives"]) == len(batch["caption"])
        for caption, negative in zip(batch["caption"], batch["negatives"]):
            assert negative != caption and sorted(negative.split()) == sorted(caption.split())  # a swap


def test_no_hard_negatives_by_default_and_bad_options_fail_at_construction(tmp_path):
    folder = write_shards(tmp_path / "d", 1, 4)
    assert "negatives" not in next(iter(make_dm(folder).train_dataloader()))
    with pytest.raises(ValueError, match="unknown hard-negative source 'scen'"):
        make_dm(folder, hard_negatives={"source": "scen", "per_sample": 1})
    with pytest.raises(ValueError, match="per_sample"):
        make_dm(folder, hard_negatives={"source": "rules", "per_sample": 0})
    with pytest.raises(ValueError, match="per_smaple"):
        make_dm(folder, hard_negatives={"source": "rules", "per_smaple": 1})
