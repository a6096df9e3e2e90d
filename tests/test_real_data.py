"""Real data as img2dataset writes it, made here (KEY.jpg, KEY.txt alt-text, KEY.json with `caption` and, on most
samples, a `recaption`; odd and corrupt images; `{shard}_stats.json` beside each shard): a caption field the shards
do not hold, a resampled stream with nothing usable, a run waiting for data that gets SIGTERM or SIGINT, the skip log
against the skip record, shards cut short, and the real-data recipe (experiments/real_data.yaml) trained on such
shards, scored on SugarCrepe files made here, then probed from its checkpoint alone."""

import contextlib
import csv
import io
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import deadline
from lit_compclip.cli import main
from lit_compclip.config import ConfigError, check_caption_fields, load_config
from lit_compclip.data.captions import split_sentences
from lit_compclip.stopping import Stopped
from lit_compclip.training.datamodule import WebDataModule
from lit_compclip.training.run import train

WORDS = ("a", "red", "cube", "sits", "left", "of", "a", "small", "blue", "ball", "on", "the", "grey", "table")
TINY = ["model.image.img_size=32", "model.image.depth=1", "model.image.width=32", "model.image.heads=2",
        "model.embed_dim=16", "model.text={tower: scratch, width: 32, layers: 1, heads: 2, max_seq_len: 16}",
        "data.batch_size=4", "data.shuffle_buffer=8", "trainer.enable_progress_bar=false", "wandb.mode=disabled"]


def tfm(image):
    from torchvision.transforms.functional import center_crop, resize, to_tensor

    return to_tensor(center_crop(resize(image, 16), 16))


def image(kind: str, seed: int) -> bytes:
    rng, buf = random.Random(seed), io.BytesIO()
    if kind == "corrupt":
        return rng.randbytes(300)
    from PIL import Image

    if kind == "gray":
        Image.new("L", (20, 28), rng.randrange(256)).save(buf, "JPEG")
    elif kind == "rgba_png":  # a PNG under a .jpg name, as some servers send them
        Image.new("RGBA", (24, 24), (rng.randrange(256), 0, 0, 128)).save(buf, "PNG")
    elif kind == "tiny":
        Image.new("RGB", (1, 1), (0, rng.randrange(256), 0)).save(buf, "JPEG")
    elif kind == "wide":  # a banner, 100 times wider than high
        Image.new("RGB", (400, 4), (0, 0, rng.randrange(256))).save(buf, "JPEG")
    else:
        Image.frombytes("RGB", (24, 24), rng.randbytes(24 * 24 * 3)).save(buf, "JPEG")
    return buf.getvalue()


def write_shard(path, first: int, n: int, odd: dict[int, str] | None = None) -> str:
    """img2dataset's layout: samples first..first+n-1 (`odd`: sample -> image kind), and its `_stats.json`."""
    odd = odd or {}
    with tarfile.open(path, "w") as tar:
        for i in range(first, first + n):
            key = f"{i:09d}"
            # some alt-texts empty, one in eleven of 300 words
            alt = "" if i % 7 == 3 else " ".join(random.Random(i).choices(WORDS, k=300 if i % 11 == 5 else 8))
            meta = {"url": f"https://example.com/{key}.jpg", "key": key, "status": "success", "caption": alt,
                    "error_message": None, "width": 24, "height": 24}
            if i % 4:
                meta["recaption"] = f"A photo of thing {i}. It is red."
            for name, data in ((f"{key}.jpg", image(odd.get(i, "rgb"), i)), (f"{key}.txt", alt.encode()),
                               (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    stats = {"count": n + 2, "successes": n, "failed_to_download": 2, "failed_to_resize": 0, "duration": 1.5,
             "start_time": 1700000000.0, "end_time": 1700000001.5,
             "status_dict": {"success": n, "HTTP Error 404: Not Found": 2}}
    with open(str(path)[:-len(".tar")] + "_stats.json", "w") as f:
        json.dump(stats, f, indent=4)
    return str(path)


def cut_copy(source: str, folder, where: str, member: int) -> str:
    """A copy of `source` (and its _stats.json) in `folder`, cut at the header of its `member`-th member, inside it,
    or inside that member's data."""
    with tarfile.open(source) as tar:
        info = tar.getmembers()[member]
    at = {"at_header": info.offset, "inside_header": info.offset + 100, "inside_member": info.offset_data + 10}[where]
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, os.path.basename(source))
    with open(source, "rb") as f, open(target, "wb") as out:
        out.write(f.read(at))
    shutil.copy(source[:-len(".tar")] + "_stats.json", folder)
    return target


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A folder of two img2dataset shards of 24 samples: grayscale, RGBA-PNG-as-jpg, 1x1 and corrupt images."""
    folder = tmp_path_factory.mktemp("img2dataset") / "shards"
    folder.mkdir()
    write_shard(folder / "00000.tar", 0, 24, {2: "gray", 5: "rgba_png", 9: "tiny", 13: "corrupt"})
    write_shard(folder / "00001.tar", 24, 24, {30: "corrupt"})
    return folder




# ------------------------------------------------------------------- a caption field the shards do not hold


@pytest.mark.parametrize("fields, missing", [
    (["data.caption_fields={recaption: 0.8, alt_text: 0.2}"], "caption_fields.alt_text"),  # img2dataset: txt
    (["data.caption_fields={re_caption: 1.0}", "data.resampled=true", "data.samples_per_epoch=64"],
     "caption_fields.re_caption"),
    (["data.later_caption_fields={alt_text: 1.0}"], "later_caption_fields.alt_text")])
@pytest.mark.parametrize("command", ["train", "config"])
def test_a_caption_field_the_shards_do_not_hold_is_one_line_before_anything_is_built(shards, tmp_path, capsys, fields,
                                                                                    missing, command):
    run_dir = tmp_path / "run"
    assert main([command, *TINY, f"data.train_shards={shards}", f"run_dir={run_dir}", *fields]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # `compclip config` prints no config it would refuse to train
    err = err.strip()
    assert err.startswith(f"compclip {command}: error: "), err
    name = missing.rsplit(".", 1)[1]
    assert err.count("\n") == 0 and f"'data.{missing}': none of the first 48 samples of data.train_shards holds " \
        f"'{name}'" in err, err
    assert "their caption fields: caption, key, recaption, status, txt, url (txt is KEY.txt" in err
    assert "did you mean 'recaption'" in err if name == "re_caption" else True
    assert not run_dir.exists()
    # what img2dataset writes is accepted: txt (KEY.txt) and any KEY.json field with text
    check_caption_fields(load_config([], TINY + [f"data.train_shards={shards}",
                                                 "data.caption_fields={recaption: 0.8, txt: 0.2}",
                                                 "data.later_caption_fields={caption: 1.0}"]))


# ------------------------------------------------------------------- a resampled stream with nothing usable


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("case", ["absent_field", "corrupt_images", "empty_shard"])
def test_a_resampled_stream_with_no_usable_sample_ends_with_the_one_line(shards, tmp_path, case, num_workers):
    folder, fields = shards, {"alt_text": 1.0}  # what the check above stops first: here the stream's own end
    if case != "absent_field":
        folder, fields = tmp_path / case, {"txt": 1.0}
        folder.mkdir()
        if case == "corrupt_images":
            write_shard(folder / "00000.tar", 0, 5, {i: "corrupt" for i in range(5)})
            write_shard(folder / "00001.tar", 5, 3, {i: "corrupt" for i in range(5, 8)})
        else:  # a shard cut before its first member: nothing at all is left
            (folder / "00000.tar").write_bytes(b"")
    dm = WebDataModule(train_shards=str(folder), val_shards=None, caption_fields=fields, sentence_sample={},
                       batch_size=4, num_workers=num_workers, shuffle_buffer=8, shard_shuffle=True, resampled=True,
                       samples_per_epoch=64, group_key=None, seed=0, train_transform=tfm, eval_transform=tfm)
    with deadline(30), pytest.raises(ConfigError, match="^data.train_shards: no train batch came out of "):
        next(iter(dm.train_dataloader()))


def test_a_resampled_run_with_no_usable_sample_is_one_line_and_exit_2(tmp_path, capsys):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    write_shard(folder / "00000.tar", 0, 6, {i: "corrupt" for i in range(6)})
    with deadline(60):
        code = main(["train", *TINY, f"data.train_shards={folder}", f"run_dir={tmp_path / 'run'}",
                     "data.caption_fields={txt: 1.0}", "data.resampled=true", "data.samples_per_epoch=64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and [line for line in err if "error" in line] == err[-1:], err
    assert err[-1].startswith(f"compclip train: error: data.train_shards: no train batch came out of '{folder}'")


# ------------------------------------------------------------------- stopping while waiting for data


def test_a_run_waiting_for_data_stops_on_sigterm(tmp_path, forks):
    """A loader worker blocked on a shard that never delivers (a FIFO nobody writes): the run stops within seconds.
    The run is a process of its own (`compclip train`, forked from the session's warm interpreter)."""
    folder, run_dir = tmp_path / "fifo", tmp_path / "run"
    folder.mkdir()
    os.mkfifo(folder / "00000.tar")
    argv = ["train", *TINY, f"data.train_shards={folder}", f"run_dir={run_dir}", "data.caption_fields={txt: 1.0}",
            "data.resampled=true", "data.samples_per_epoch=64", "data.num_workers=1"]
    # its own process group, so that whatever happens no loader worker outlives the test
    job = {"cwd": str(tmp_path), "argv": argv, "out": str(tmp_path / "out.txt"), "err": str(tmp_path / "err.txt"),
           "session": True}

    def printed():
        return (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()

    pid = forks.start(job)
    try:
        with deadline(120):
            while not (run_dir / "config.yaml").exists():  # written just before fit starts
                assert forks.wait(pid, 0) is None, printed()
                time.sleep(0.2)
            time.sleep(2)  # fit asks for the first batch, the worker is stuck opening the shard
            os.kill(pid, signal.SIGTERM)
            sent = time.monotonic()
            code = forks.wait(pid, 30)
            waited = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    out, err = printed()
    assert code == 143, (out, err)
    assert waited < 15, waited
    assert err.strip().splitlines()[-1].startswith("compclip train: stopped by SIGTERM at step 0;"), err
    assert "Traceback" not in err
    assert set(os.listdir(run_dir)) <= {"config.yaml", "hparams.yaml", "metrics.csv"}  # no record of a run that ended
    load_config([str(run_dir / "config.yaml")])  # whole


def test_a_run_waiting_for_data_stops_on_sigint(tmp_path, capsys):
    """The same in this process (no loader worker: the training process itself is blocked opening the shard)."""
    folder, run_dir = tmp_path / "fifo", tmp_path / "run"
    folder.mkdir()
    os.mkfifo(folder / "00000.tar")
    cfg = load_config([], TINY + [f"data.train_shards={folder}", f"run_dir={run_dir}", "data.caption_fields={txt: 1.0}",
                                  "data.resampled=true", "data.samples_per_epoch=64", "data.num_workers=0"])

    def interrupt_once_fitting():
        for _ in range(600):
            if (run_dir / "config.yaml").exists():
                time.sleep(1)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.1)

    threading.Thread(target=interrupt_once_fitting, daemon=True).start()
    handler = signal.getsignal(signal.SIGINT)
    with deadline(60), pytest.raises(Stopped) as stopped:
        train(cfg)
    assert stopped.value.code == 130 and signal.getsignal(signal.SIGINT) is handler  # restored
    assert capsys.readouterr().err.strip().endswith("compclip train: stopped by SIGINT at step 0; "
                                                    f"{run_dir} keeps no checkpoint yet")


# ------------------------------------------------------------------- the skip log against the skip record


@pytest.fixture(scope="module")
def resampled_run(shards, tmp_path_factory):
    """Two resampled epochs on 2 workers over the shards with 4 corrupt images and a copy of the second shard cut at a
    member header, the log of the run's lit_compclip loggers kept in a file (the loader workers' too)."""
    root = tmp_path_factory.mktemp("resampled")
    folder = root / "data"
    folder.mkdir()
    write_shard(folder / "00000.tar", 0, 24, {2: "gray", 5: "corrupt", 9: "tiny", 13: "corrupt", 17: "corrupt",
                                              21: "rgba_png", 22: "corrupt"})
    cut = cut_copy(str(shards / "00001.tar"), folder, "at_header", 3 * 10)  # 10 samples of 3 files before the cut
    cfg = load_config([], TINY + [f"data.train_shards={folder}", f"run_dir={root / 'run'}",
                                  "data.caption_fields={recaption: 0.8, txt: 0.2}", "data.resampled=true",
                                  "data.samples_per_epoch=32", "data.num_workers=2", "trainer.max_epochs=2"])
    handler = logging.FileHandler(root / "log.txt")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("lit_compclip")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    printed = io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdout", printed)
            train(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
    return root / "run", (root / "log.txt").read_text(), printed.getvalue(), cut


def test_the_log_names_exactly_the_skips_the_record_counts_on_a_resampled_run(resampled_run):
    run_dir, log, _, _ = resampled_run
    record = json.loads((run_dir / "data_skips.json").read_text())["train"]["by_reason"]
    logged = {reason: log.count(f": {reason} (") for reason in ("bad_image", "bad_json", "no_caption", "no_image",
                                                                 "truncated_shard", "unreadable_shard")}
    assert record["bad_image"] > 0 and record["truncated_shard"] > 0  # the run met both
    assert "counted only" not in log  # under the ten lines per reason and worker: every skip has its line
    assert {r: n for r, n in logged.items() if n} == record


def test_a_cut_shard_is_named_in_the_log_and_the_record_with_what_was_lost(resampled_run):
    run_dir, log, printed, cut = resampled_run
    record = json.loads((run_dir / "data_skips.json").read_text())
    assert record["cut_shards"] == [{"split": "train", "shard": cut, "samples_read": 10, "samples_listed": 24,
                                     "samples_lost": 14}]
    assert f"train data: shard {cut} is cut short (it ends without its end-of-archive blocks): 10 samples can be " \
           "read, 14 lost of the 24 its _stats.json lists" in log
    assert f"skipped shard of {cut}: truncated_shard (cut short: the file ends at byte" in log
    assert "10 samples read, 14 lost of the 24 its _stats.json lists" in log
    line = next(line for line in printed.splitlines() if line.startswith("data: skipped"))
    assert "; 1 shard(s) cut short (14 samples lost); see" in line


# ------------------------------------------------------------------- shards cut short


@pytest.mark.parametrize("where", ["at_header", "inside_header", "inside_member"])
def test_a_shard_cut_short_is_named_counted_and_the_rest_still_trains(shards, tmp_path, caplog, where):
    cut = cut_copy(str(shards / "00000.tar"), tmp_path / "data", where, 3 * 6)  # 6 samples whole before the cut
    shutil.copy(shards / "00001.tar", tmp_path / "data")
    dm = WebDataModule(train_shards=str(tmp_path / "data"), val_shards=None, caption_fields={"txt": 1.0},
                       sentence_sample={}, batch_size=1, num_workers=0, shuffle_buffer=0, shard_shuffle=False,
                       resampled=False, samples_per_epoch=None, group_key=None, seed=0, train_transform=tfm,
                       eval_transform=tfm)
    with caplog.at_level(logging.WARNING, logger="lit_compclip"):
        dm.setup("fit")
        batches = list(dm.train_dataloader())
    keys = [k for b in batches for k in b["key"]]
    skipped = sum(b["skipped"].get("truncated_shard", 0) for b in batches)
    # the samples before the cut (less 000000003, whose alt-text is empty), then the whole second shard
    # (000000030's image is corrupt, and 24, 31, 38, 45 have empty alt-texts)
    assert keys[:5] == ["000000000", "000000001", "000000002", "000000004", "000000005"] and len(keys) == 5 + 19
    assert skipped == 1
    assert dm.cut == {"train": [{"shard": cut, "samples_read": 6, "samples_listed": 24, "samples_lost": 18}],
                      "val": []}
    assert f"train data: shard {cut} is cut short" in caplog.text
    detail = {"inside_member": "the file ends inside member '000000006.jpg'"}.get(where, "the file ends at byte")
    assert f"skipped shard of {cut}: truncated_shard (cut short: {detail}" in caplog.text
    assert "6 samples read, 18 lost of the 24 its _stats.json lists" in caplog.text


# ------------------------------------------------------------------- the real-data recipe, end to end

RECIPE = str(Path(__file__).resolve().parents[1] / "experiments" / "real_data.yaml")
# Dense recaption sentences, each over 32 words: two of them (what the recipe trains on) pass the 64 wordpieces of
# the tower's default context and fit the recipe's 256. Abbreviations, initials and decimals end none of them.
SENTENCES = (
    "Mr. J. R. Smith, a tall man in a long grey wool coat, stands about 3.5 m from a bright red door on St. Mark's Rd. "
    "with his left hand raised toward a small white enamel sign that reads No. 12 above a brass letter box.",
    "To the left of the door a black bicycle with a wicker basket leans against the brick wall, e.g. beside a row of "
    "terracotta pots holding red geraniums, white daisies and a small olive tree whose leaves catch the low light.",
    "Behind the man the street curves gently downhill past a bakery with a striped blue awning, a parked yellow taxi "
    "and two children in school uniforms who wait at the corner holding hands at 8.15 a.m. on a clear day.",
    "Above the rooftops a pale sky is crossed by thin white clouds, and the warm light of the early sun falls across "
    "the whole scene from the right, casting long soft shadows of the man and the bicycle over the pavement.",
)
SUGARCREPE = {"swap_att": [("a red door and a grey coat", "a grey door and a red coat")],
              "replace_rel": [("a bicycle to the left of a door", "a bicycle to the right of a door")]}


def recipe_shard(path: Path, first: int, n: int, odd: dict[int, str]) -> dict[str, tuple[str, str]]:
    """One shard as img2dataset writes it with --caption_col and a `compclip recaption` pass: KEY.txt the alt-text,
    KEY.json img2dataset's fields, the alt-text as `caption` and a four-sentence `recaption`. Returns key -> (alt-text,
    recaption)."""
    captions = {}
    with tarfile.open(path, "w") as tar:
        for i in range(first, first + n):
            key = f"{i:09d}"
            alt = " ".join(random.Random(i).choices(WORDS, k=8))
            recaption = " ".join(SENTENCES[(i + j) % 4] for j in range(4))  # another first sentence per sample
            meta = {"url": f"https://example.com/{key}.jpg", "key": key, "status": "success", "error_message": None,
                    "width": 24, "height": 24, "original_width": 640, "original_height": 480, "exif": None,
                    "sha256": f"{i:064x}", "caption": alt, "recaption": recaption}
            captions[key] = (alt, recaption)
            for name, data in ((f"{key}.jpg", image(odd.get(i, "rgb"), i)), (f"{key}.txt", alt.encode()),
                               (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return captions


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory):
    """Train and val shards (grayscale, RGBA-PNG-as-jpg, 1x1, very wide and corrupt images) and SugarCrepe-format
    files with their images: (train folder, val folder, annotations, images, key -> (alt-text, recaption))."""
    root = tmp_path_factory.mktemp("recipe_data")
    train_dir, val_dir, notes, pictures = (root / p for p in ("train", "val", "sugarcrepe", "coco"))
    for folder in (train_dir, val_dir, notes, pictures):
        folder.mkdir()
    captions = {**recipe_shard(train_dir / "00000.tar", 0, 8, {1: "gray", 3: "rgba_png", 5: "tiny", 6: "wide"}),
                **recipe_shard(train_dir / "00001.tar", 8, 8, {9: "wide", 12: "corrupt"}),
                **recipe_shard(val_dir / "00000.tar", 16, 4, {17: "gray"})}
    for n, (subset, rows) in enumerate(SUGARCREPE.items()):
        kind = ("gray", "rgba_png")[n]
        (pictures / f"{subset}.jpg").write_bytes(image(kind, 100 + n))
        (notes / f"{subset}.json").write_text(json.dumps(
            {str(i): {"filename": f"{subset}.jpg", "caption": pos, "negative_caption": neg}
             for i, (pos, neg) in enumerate(rows)}))
    assert all(split_sentences(recaption) == [SENTENCES[(int(k) + j) % 4] for j in range(4)]
               for k, (_, recaption) in captions.items())
    assert min(len(s.split()) for s in SENTENCES) > 32
    return train_dir, val_dir, notes, pictures, captions


def recipe_args(recipe_data, run_dir) -> list[str]:
    """The recipe pointed at the test's files, with a small image tower; its text tower (MiniLM, 256) as it is."""
    train_dir, val_dir, notes, pictures, _ = recipe_data
    return [RECIPE, f"data.train_shards={train_dir}", f"data.val_shards={val_dir}",
            f"probes.suites.sugarcrepe.annotations={notes}", f"probes.suites.sugarcrepe.images={pictures}",
            "model.image.img_size=32", "model.image.depth=1", "model.image.width=32", "model.image.heads=2",
            "model.embed_dim=16", "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=8",
            "trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "wandb.mode=disabled", f"run_dir={run_dir}"]


@pytest.fixture(scope="module")
def recipe_run(recipe_data, tmp_path_factory):
    """experiments/real_data.yaml trained for 2 steps through the CLI, from a working folder of its own:
    (run folder, working folder)."""
    root = tmp_path_factory.mktemp("recipe_run")
    cwd = root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", *recipe_args(recipe_data, root / "run")]) == 0
    return root / "run", cwd


def test_the_real_data_recipe_trains_on_img2dataset_shards_and_scores_sugarcrepe(recipe_run):
    run, cwd = recipe_run
    probes = json.loads((run / "probes.json").read_text())
    assert {f"probe/sugarcrepe/{s}" for s in SUGARCREPE} | {"probe/sugarcrepe/mean"} <= set(probes)
    assert probes["probe/sugarcrepe/n"] == 2
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.model.text.max_seq_len == 256 and dict(cfg.data.sentence_sample) == {"recaption": 2}
    assert cfg.get("synth") is None
    # two sampled sentences of a dense recaption fit the recipe's text context: no caption was cut
    logged = [r for r in csv.DictReader(io.StringIO((run / "metrics.csv").read_text())) if r["train/loss"]]
    assert len(logged) == 2 and all(float(r["train/truncated_fraction"]) == 0.0 for r in logged)
    assert json.loads((run / "data_skips.json").read_text())["train"]["by_reason"] == {"bad_image": 1}
    assert (run / "checkpoints" / "last.ckpt").is_file() and not os.listdir(cwd)  # nothing in the working folder


def test_the_real_data_recipe_samples_sentences_of_the_recaption_only(recipe_data, tmp_path):
    """A pass over the recipe's training data: each caption is a whole alt-text or two whole sentences of the
    sample's recaption, in their order."""
    _, _, _, _, captions = recipe_data
    cfg = load_config([RECIPE], recipe_args(recipe_data, tmp_path / "run")[1:])
    dm = WebDataModule(**OmegaConf.to_container(cfg.data), seed=0, train_transform=tfm, eval_transform=tfm)
    dm.setup("fit")
    picked = [(k, c) for _ in range(3) for b in dm.train_dataloader() for k, c in zip(b["key"], b["caption"])]
    kinds = set()
    for key, caption in picked:
        alt, recaption = captions[key]
        pairs = {" ".join(p) for p in itertools.combinations(split_sentences(recaption), 2)}
        assert caption == alt or caption in pairs, caption
        kinds.add("alt" if caption == alt else "pair")
    assert kinds == {"alt", "pair"} and len(picked) >= 3 * 12  # full batches of 4 of the 15 readable samples
    assert "000000012" not in dict(picked)  # its image does not decode


def test_probe_scores_the_runs_own_suites_without_building_a_world_and_never_overwrites(recipe_run, tmp_path,
                                                                                       capsys, monkeypatch):
    """`compclip probe --ckpt` with no experiment file: the suites of the run's config.yaml, no synthetic world made,
    and each call's results in a new folder under the run folder, named on stdout."""
    run, _ = recipe_run
    monkeypatch.chdir(tmp_path)
    trained = {k: v for k, v in json.loads((run / "probes.json").read_text()).items() if not k.endswith("/seconds")}
    outs = []
    for _ in range(2):
        assert main(["probe", "--ckpt", str(run / "checkpoints" / "last.ckpt")]) == 0
        printed = re.search(r"probes\.json and failures\.md in (\S+)", capsys.readouterr().out)
        assert printed, "the output folder is not named on stdout"
        out = Path(printed.group(1))
        assert out.resolve().parent == run.resolve() and (out / "probes.json").is_file()
        outs.append((out, (out / "probes.json").read_bytes()))
    (first, first_bytes), (second, _) = outs
    assert first != second and (first / "probes.json").read_bytes() == first_bytes  # the first left as it was
    probed = {k: v for k, v in json.loads(first_bytes).items() if not k.endswith("/seconds")}
    assert probed == trained  # the run's own suite, the same model: the scores training wrote
    assert not os.listdir(tmp_path)  # no data/synth (nor anything else) in the working folder
    assert not [p for p in run.parent.rglob("*") if p.name == "synth" or p.name == "manifest.json"]
