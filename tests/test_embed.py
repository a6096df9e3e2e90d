"""`compclip embed`: an image folder, WebDataset shards and a text file give, key by key and in the written order,
the embeddings the model's own encode_image(transform(image)) / encode_text give; what cannot be read is counted,
logged and listed; every bad input is one line, exit 2, nothing written; SIGTERM leaves nothing behind."""

import io
import json
import os
import signal
import tarfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (BLUE, CYAN, GREEN, GREY, PURPLE, RED, YELLOW, assert_close_by_norm, deadline, jpeg, solid,
                     write_shard)
from lit_compclip import embed as embed_module
from lit_compclip.embed import main
from lit_compclip.stopping import Stopped

RTOL = 1e-5  # batched vs one by one, in float32: rounding only


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    import lit_compclip

    return lit_compclip.load(str(tiny_checkpoint)).float()


def direct_image(model, image) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(model.transform(image.convert("RGB"))[None])[0]


def direct_text(model, text) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_text([text])[0]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read(path):
    """(keys, embeddings, info) of an output file, read as a user must be able to: no pickle."""
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["embeddings", "info", "keys"]
        keys, emb, info = z["keys"], z["embeddings"], json.loads(z["info"].item())
    assert keys.dtype.kind == "U" and emb.dtype == np.float32 and emb.shape == (len(keys), info["dim"])
    assert info["count"] == len(keys)
    return keys.tolist(), torch.from_numpy(emb), info


def check_rows(keys, emb, want: dict) -> None:
    """Each key's row is its direct embedding; the direct embeddings differ, so a row in the wrong place fails."""
    assert keys == list(want)
    for i, key in enumerate(keys):
        assert_close_by_norm(emb[i], want[key], RTOL, key)
    rows = torch.stack(list(want.values()))
    assert torch.cdist(rows, rows).add(torch.eye(len(rows))).min() > 1e-3  # no two alike


def test_an_image_folder_gives_each_files_embedding_under_its_relative_path(tmp_path, tiny_checkpoint, model, capsys,
                                                                            monkeypatch):
    root = tmp_path / "images"
    files = {"b/c.jpg": GREEN, "B/e.JPEG": YELLOW, "a.png": RED, "b/d.webp": BLUE, "z.PNG": PURPLE}
    for name, colour in files.items():
        solid(root / name, colour, size=(12, 10))
    solid(root / ".hidden.png", CYAN)  # hidden files and folders, other suffixes: not images of the set
    solid(root / ".cache" / "x.png", CYAN)
    (root / "notes.txt").write_text("not an image")
    monkeypatch.setattr(embed_module, "PROGRESS_SECONDS", 0.0)  # a progress line per batch (stderr is no terminal)
    code, out, err = run(capsys, tiny_checkpoint, "--images", root, "--out", tmp_path / "e.npz", "--batch-size", 2)
    assert code == 0, err
    keys, emb, info = read(tmp_path / "e.npz")
    want = {}
    for key in sorted(files):  # code point order: "B/..." first
        with Image.open(root / key) as im:
            want[key] = direct_image(model, im)
    check_rows(keys, emb, want)
    assert info["input"] == {"images": str(root), "form": "folder", "files": 5}
    assert info["encoder"]["model"] == "compclip" and info["encoder"]["text_cache"] is None and info["skipped"] == {}
    assert out.strip().splitlines()[-1].startswith(f"5 images -> {tmp_path / 'e.npz'} (5 x 32 float32")
    assert out.strip().endswith("nothing skipped")
    assert "5/5 images in" in err
    assert sorted(os.listdir(tmp_path)) == ["e.npz", "images"]  # no temporary file left


@pytest.mark.parametrize("form", ["folder", "brace", "list", "one_tar"])
def test_shards_give_each_samples_embedding_under_its_key_in_shard_order(tmp_path, tiny_checkpoint, model, capsys,
                                                                         form):
    folder = tmp_path / "shards"
    folder.mkdir()
    colours = {"s0_000": RED, "s0_001": GREEN, "s0_002": BLUE, "s1_000": YELLOW, "s1_001": PURPLE, "s2_000": GREY}
    write_shard(folder / "00000.tar", [{"__key__": k, "jpg": jpeg(colour=colours[k]), "txt": k}
                                       for k in ("s0_001", "s0_000", "s0_002")])  # the tar's order, not sorted
    write_shard(folder / "00001.tar", [
        {"__key__": "s1_000", "png": _png(colours["s1_000"])},
        {"__key__": "s1_bad", "jpg": b"not a jpeg"},  # undecodable
        {"__key__": "s1_txt", "txt": "a caption, no image"},
        {"__key__": "s0_000", "jpg": jpeg(colour=CYAN)},  # a key met before: the first is kept
        {"__key__": "s1_001", "webp": _webp(colours["s1_001"]), "jpg": jpeg(colour=colours["s1_001"])}])
    cut = write_shard(folder / "00002.tar", [{"__key__": "s2_000", "jpg": jpeg(colour=GREY)},
                                             {"__key__": "s2_001", "jpg": jpeg(colour=CYAN)}])
    with tarfile.open(cut) as tar:
        end = tar.getmember("s2_001.jpg").offset_data + 10
    os.truncate(cut, end)  # an interrupted copy: cut inside its second sample (only the folder form reads it)
    spec = {"folder": folder, "brace": f"{folder}/{{00000..00001}}.tar",
            "list": f"{folder}/00000.tar::{folder}/00001.tar", "one_tar": folder / "00000.tar"}[form]
    code, out, err = run(capsys, tiny_checkpoint, "--images", spec, "--out", tmp_path / "e.npz", "--batch-size", 2)
    assert code == 0, err
    keys, emb, info = read(tmp_path / "e.npz")
    order = ["s0_001", "s0_000", "s0_002"] + {"one_tar": [], "folder": ["s1_000", "s1_001", "s2_000"]}.get(
        form, ["s1_000", "s1_001"])
    want = {}
    for key in order:  # the sample's image as the shard holds it (jpg is the first of a sample's image files)
        data = _png(colours[key]) if key == "s1_000" else jpeg(colour=colours[key])
        with Image.open(io.BytesIO(data)) as im:
            want[key] = direct_image(model, im)
    check_rows(keys, emb, want)
    assert info["input"]["form"] == "shards"
    skipped = {} if form == "one_tar" else {"unreadable_image": ["s1_bad"], "no_image": ["s1_txt"],
                                             "duplicate_key": ["s0_000"]}
    if form == "folder":
        skipped["truncated_shard"] = [cut]
    assert info["skipped"] == skipped
    listed = "; ".join(f"{reason} 1 ({keys[0]})" for reason, keys in skipped.items())
    assert out.strip().endswith(f"skipped {len(skipped)}: {listed}" if skipped else "nothing skipped")
    for reason, (key,) in skipped.items():
        assert f"skipped {key!r}: {reason}" in err


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 14), colour).save(buf, "PNG")
    return buf.getvalue()


def _webp(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 14), colour).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


def test_a_text_file_gives_each_lines_embedding_under_its_line_number(tmp_path, tiny_checkpoint, model, capsys):
    lines = ["a red square left of a blue circle", "", "a blue square", "   ",
             "two green triangles above a small yellow circle", "x"]
    path = tmp_path / "captions.txt"
    path.write_bytes(("\r\n".join(lines[:3]) + "\n" + "\n".join(lines[3:]) + "\n").encode())  # either line ending
    code, out, err = run(capsys, tiny_checkpoint, "--texts", path, "--out", tmp_path / "t.npz", "--batch-size", 2)
    assert code == 0, err
    keys, emb, info = read(tmp_path / "t.npz")
    check_rows(keys, emb, {str(i): direct_text(model, line) for i, line in enumerate(lines) if line.strip()})
    assert info["skipped"] == {"blank_line": ["1", "3"]} and info["input"]["lines"] == 6
    assert out.strip().startswith(f"4 captions -> {tmp_path / 't.npz'} (4 x 32 float32")
    assert out.strip().endswith("skipped 2: blank_line 2 (1, 3)")


def test_an_encoder_spec_embeds_as_the_checkpoint_does(tmp_path, tiny_checkpoint, model, capsys):
    root = tmp_path / "images"
    for name, colour in {"a.png": RED, "b.png": GREY}.items():
        solid(root / name, colour)
    spec = f"compclip:{tiny_checkpoint}"
    code, out, err = run(capsys, spec, "--images", root, "--out", tmp_path / "e.npz")
    assert code == 0, err
    keys, emb, info = read(tmp_path / "e.npz")
    want = {}
    for key in ("a.png", "b.png"):
        with Image.open(root / key) as im:
            want[key] = direct_image(model, im)
    check_rows(keys, emb, want)
    assert info["encoder"]["spec"] == spec and info["encoder"]["kind"] == "compclip"


def test_an_unreadable_image_is_counted_logged_listed_and_left_out(tmp_path, tiny_checkpoint, model, capsys):
    root = tmp_path / "images"
    solid(root / "good.png", RED)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "JPEG")
    (root / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # an interrupted copy
    (root / "text.png").write_text("not an image")
    code, out, err = run(capsys, tiny_checkpoint, "--images", root, "--out", tmp_path / "e.npz")
    assert code == 0, err
    keys, emb, info = read(tmp_path / "e.npz")
    with Image.open(root / "good.png") as im:
        assert keys == ["good.png"] and float((emb[0] - direct_image(model, im)).norm()) < RTOL
    assert info["skipped"] == {"unreadable_image": ["cut.jpg", "text.png"]}
    assert out.strip().endswith("skipped 2: unreadable_image 2 (cut.jpg, text.png)")
    assert "skipped 'cut.jpg': unreadable_image" in err and "skipped 'text.png': unreadable_image" in err


# ---- bad inputs: one line, exit 2, nothing written ---------------------------------------------------------------

OUT = ["--out", "{t}/new/e.npz"]
IMAGES = ["--images", "{t}/good"]
CASES = {
    "no_model": (IMAGES + OUT, "the following arguments are required: MODEL"),
    "model_missing": (["{t}/none.ckpt"] + IMAGES + OUT, "MODEL '{t}/none.ckpt' not found"),
    "model_of_tensors": (["{t}/plain.ckpt"] + IMAGES + OUT, "is not a lit_compclip training checkpoint"),
    "model_folder_of_nothing": (["{t}/empty"] + IMAGES + OUT, "'{t}/empty'"),
    "spec_unknown_kind": (["clip:ViT-B-32"] + IMAGES + OUT, "'clip'"),
    "spec_missing_file": (["compclip:{t}/none.ckpt"] + IMAGES + OUT, "none.ckpt' not found"),
    "both_inputs": (["{ckpt}"] + IMAGES + ["--texts", "{t}/texts.txt"] + OUT, "not both"),
    "no_input": (["{ckpt}"] + OUT, "give --images PATH or --texts FILE"),
    "images_missing": (["{ckpt}", "--images", "{t}/nowhere"] + OUT, "--images '{t}/nowhere' not found"),
    "images_none_in_folder": (["{ckpt}", "--images", "{t}/empty"] + OUT, "holds no image file"),
    "images_and_shards_in_folder": (["{ckpt}", "--images", "{t}/mixed"] + OUT, "both image files and .tar shards"),
    "shards_pattern_matches_nothing": (["{ckpt}", "--images", "{t}/s/{{0..3}}.tar"] + OUT, "matches no file"),
    "every_image_unreadable": (["{ckpt}", "--images", "{t}/bad"] + OUT, "no image could be read"),
    "texts_missing": (["{ckpt}", "--texts", "{t}/none.txt"] + OUT, "--texts '{t}/none.txt' not found"),
    "texts_empty": (["{ckpt}", "--texts", "{t}/empty.txt"] + OUT, "holds no caption"),
    "texts_blank": (["{ckpt}", "--texts", "{t}/blank.txt"] + OUT, "holds no caption"),
    "texts_not_utf8": (["{ckpt}", "--texts", "{t}/latin1.txt"] + OUT, "cannot be read as UTF-8 text"),
    "out_exists": (["{ckpt}"] + IMAGES + ["--out", "{t}/old.npz"], "--out '{t}/old.npz' already exists"),
    "out_not_npz": (["{ckpt}"] + IMAGES + ["--out", "{t}/e.parquet"], "must end in .npz"),
    "out_beneath_a_file": (["{ckpt}"] + IMAGES + ["--out", "{t}/afile/sub/e.npz"], "cannot be made"),
    "batch_size_zero": (["{ckpt}"] + IMAGES + OUT + ["--batch-size", "0"], "--batch-size must be >= 1"),
    "batch_size_not_a_number": (["{ckpt}"] + IMAGES + OUT + ["--batch-size", "two"], "--batch-size"),
    "device_unknown": (["{ckpt}"] + IMAGES + OUT + ["--device", "quantum"], "--device 'quantum'"),
    **({} if torch.cuda.is_available() else {  # where there is no GPU
        "device_cuda_without_gpu": (["{ckpt}"] + IMAGES + OUT + ["--device", "cuda"], "torch sees no CUDA GPU")}),
    "option_unknown": (["{ckpt}"] + IMAGES + OUT + ["--overwrite"], "unrecognized arguments: --overwrite"),
}


def tree(root) -> list:
    return sorted((os.path.relpath(os.path.join(d, n), root), os.path.getsize(os.path.join(d, n)))
                  for d, dirs, files in os.walk(root) for n in files + dirs)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, tiny_checkpoint, capsys, case):
    t = tmp_path
    solid(t / "good" / "a.png", RED)
    (t / "empty").mkdir()
    (t / "empty" / "readme.txt").write_text("no images here")
    solid(t / "mixed" / "a.png", RED)
    write_shard(t / "mixed" / "00000.tar", [{"__key__": "k", "jpg": jpeg()}])
    (t / "bad").mkdir()
    (t / "bad" / "a.png").write_text("not an image")
    (t / "texts.txt").write_text("a caption\n")
    (t / "empty.txt").write_text("")
    (t / "blank.txt").write_text("\n  \n\t\n")
    (t / "latin1.txt").write_bytes("un carré rouge\n".encode("latin-1"))
    (t / "old.npz").write_bytes(b"an earlier result")
    (t / "afile").write_text("")
    torch.save({"weight": torch.zeros(2)}, t / "plain.ckpt")
    before = tree(t)
    args, message = CASES[case]
    code, out, err = run(capsys, *[a.format(t=t, ckpt=tiny_checkpoint) for a in args])
    assert code == 2 and out == "", (out, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("compclip embed: error: ") and message.format(t=t) in lines[-1], err
    assert [line for line in lines if "error" in line] == lines[-1:], err  # one line; a skip's may precede it
    assert tree(t) == before


# ---- a stop signal --------------------------------------------------------------------------------------------------



def test_sigterm_while_waiting_for_a_shard_stops_it_and_leaves_nothing(tmp_path, tiny_checkpoint, capsys,
                                                                      monkeypatch):
    """The second shard is a FIFO nobody writes: the reader waits in open() for ever, until SIGTERM."""
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(folder / "00000.tar", [{"__key__": f"k{i}", "jpg": jpeg()} for i in range(3)])
    os.mkfifo(folder / "00001.tar")
    reading = threading.Event()
    decode = embed_module.decoded
    monkeypatch.setattr(embed_module, "decoded", lambda *a, **k: (reading.set(), decode(*a, **k))[1])

    def stop_once_reading():
        if reading.wait(120):
            time.sleep(1)  # past the first shard, into the FIFO's open()
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_reading, daemon=True).start()
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "made" / "e.npz"
    with deadline(120), pytest.raises(Stopped) as stopped:
        main([str(tiny_checkpoint), "--images", str(folder), "--out", str(out)])
    assert stopped.value.code == 143 and signal.getsignal(signal.SIGTERM) is handler  # restored
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"compclip embed: stopped by SIGTERM; nothing was written to {out}", err
    assert sorted(os.listdir(tmp_path)) == ["shards"]  # the folder made for --out is gone, no partial file anywhere
