"""compclip recaption: originals kept byte for byte, recaptions and provenance added, resumable, failures recorded."""

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest

from lit_compclip.recaption import BACKENDS
from lit_compclip.recaption.base import Outcome
from lit_compclip.recaption.command import main
from lit_compclip.recaption.paths import worker_shards
from lit_compclip.recaption.pipeline import PARTIAL
from lit_compclip.recaption.prompt import DEFAULT_TEMPLATE, load_template, prompt_version
from lit_compclip.synth.scene_backend import SceneBackend
from lit_compclip.synth import captions, generate

TIME = "2026-01-01T00:00:00+00:00"


class DyingBackend(SceneBackend):
    """The scene backend that is killed (KeyboardInterrupt) once `budget` samples have been captioned."""

    budget = 0
    batch_size = 3  # small calls, so the kill lands inside a shard after some samples were written

    def caption(self, requests):
        if DyingBackend.budget < len(requests):
            raise KeyboardInterrupt
        DyingBackend.budget -= len(requests)
        return super().caption(requests)


class FlakyBackend:
    """Fails samples whose key is a multiple of 4 (an HTTP error) and answers blank for key 1."""

    name, model = "flaky", "stub"

    def __init__(self):
        pass

    def caption(self, requests):
        def one(r):
            k = int(r.key)
            return Outcome(None, "HTTP 503 after 3 tries") if k % 4 == 0 else Outcome("  " if k == 1 else f"cap {k}")
        return [one(r) for r in requests]

    def close(self):
        pass


class EchoBackend:
    """Answers with the filled prompt, so tests can see what the model was asked."""

    name, model = "echo", "stub"

    def __init__(self):
        pass

    def caption(self, requests):
        return [Outcome(f"{r.prompt} [{r.image_ext} {len(r.image)}]") for r in requests]

    def close(self):
        pass


@pytest.fixture(autouse=True)
def stubs(monkeypatch):
    for name, cls in (("dying", DyingBackend), ("flaky", FlakyBackend), ("echo", EchoBackend)):
        monkeypatch.setitem(BACKENDS, name, f"{__name__}:{cls.__name__}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Not the session's world: 3 training shards of 8 samples, so recaptioning every shard takes no time."""
    out = tmp_path_factory.mktemp("synth") / "world"
    generate(str(out), train_families=6, eval_families=2, shard_size=8, probe_size=2, shape_twins=0)  # 3 shards of 8
    return out


def members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def headers(path):
    """Member metadata apart from the size (a rewritten KEY.json changes only its size)."""
    with tarfile.open(path) as tar:
        return [(m.name, m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname, m.type) for m in tar.getmembers()]


def tree_bytes(folder):
    return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder))}


def recaption(*args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_scene_backend_keeps_every_original_file_and_adds_a_recaption(world, tmp_path, capsys):
    rc, out, _ = recaption(world / "train", tmp_path, "--backend", "scene", "--seed", 3, "--provenance-time", TIME,
                           capsys=capsys)
    assert rc == 0 and "24 samples, 24 recaptioned, 0 failed" in out
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(world / "train"))
    for shard in os.listdir(world / "train"):
        before, after = members(world / "train" / shard), members(tmp_path / shard)
        assert [n for n, _ in before] == [n for n, _ in after]  # same samples, same files, same order
        assert headers(world / "train" / shard) == headers(tmp_path / shard)  # reruns give the same tar bytes
        for (name, old), (_, new) in zip(before, after):
            if not name.endswith(".json"):
                assert new == old
                continue
            old, new = json.loads(old), json.loads(new)
            assert {k: v for k, v in new.items() if not k.startswith("recaption")} == \
                   {k: v for k, v in old.items() if k != "recaption"}
            assert new["recaption_previous"] == old["recaption"]  # the input's own recaption is not lost
            split = "eval" if old["split"] == "val" else "train"
            rng = random.Random(f"3/recaption/{old['key']}")
            assert new["recaption"] == captions.recaption(old["scene"], rng, split)
            assert new["recaption_provenance"] == {
                "backend": "scene", "model": "synth.captions.recaption", "prompt_version": prompt_version(DEFAULT_TEMPLATE),
                "fields": ["txt", "title"], "time": TIME, "options": {"seed": 3}}


def test_killed_run_resumes_to_the_same_bytes_as_an_uninterrupted_run(world, tmp_path, capsys):
    common = ["--seed", 1, "--provenance-time", TIME]
    assert recaption(world / "train", tmp_path / "whole", "--backend", "scene", *common, capsys=capsys)[0] == 0
    DyingBackend.budget = 12  # shard 0 (8 samples) completes; shard 1 dies after 3 of its samples were written
    rc, _, err = recaption(world / "train", tmp_path / "resumed", "--backend", "dying", *common, capsys=capsys)
    assert rc == 130 and "run the same command again to resume" in err
    assert sorted(os.listdir(tmp_path / "resumed")) == ["shard-000000.tar", "shard-000001.tar" + PARTIAL]
    assert (tmp_path / "resumed" / ("shard-000001.tar" + PARTIAL)).stat().st_size > 0
    rc, out, _ = recaption(world / "train", tmp_path / "resumed", "--backend", "scene", *common, capsys=capsys)
    assert rc == 0 and "16 samples" in out and "1 already finished" in out
    assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "whole")


def test_finished_shard_with_the_wrong_sample_count_is_redone(world, tmp_path, capsys, caplog):
    args = [world / "train", tmp_path, "--backend", "scene", "--provenance-time", TIME]
    assert recaption(*args, capsys=capsys)[0] == 0
    reference = tree_bytes(tmp_path)
    short = tmp_path / "shard-000002.tar"
    kept = members(short)[:6]  # two samples of three files
    with tarfile.open(short, "w") as tar:
        for name, data in kept:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rc, out, _ = recaption(*args, capsys=capsys)
    assert rc == 0 and "8 samples" in out and "2 already finished" in out and "1 redone" in out
    assert "output has 2 samples" in caplog.text
    assert tree_bytes(tmp_path) == reference


def test_failing_samples_keep_their_fields_get_the_reason_and_set_the_exit_code(world, tmp_path, capsys):
    rc, out, err = recaption(world / "train", tmp_path / "a", "--backend", "flaky", "--max-failure-rate", 0.4,
                             capsys=capsys)
    # keys 0, 4, ..., 20 fail with HTTP 503 (6), key 1 answers blank (1): 7 of 24; 3 of 8 in shard 0, 2 of 8 after
    assert rc == 0 and "24 samples, 17 recaptioned, 7 failed" in out and "3 done" in out
    assert "6 x HTTP 503 after 3 tries" in out and "1 x empty answer" in out
    metas = {n: json.loads(d) for n, d in members(tmp_path / "a" / "shard-000000.tar") if n.endswith(".json")}
    failed = metas["000000004.json"]
    assert failed["recaption_error"] == "HTTP 503 after 3 tries" and "recaption" not in failed
    assert failed["alt_text"] and failed["scene"]  # original fields kept
    assert metas["000000002.json"]["recaption"] == "cap 2" and "recaption_error" not in metas["000000002.json"]
    rc, out, err = recaption(world / "train", tmp_path / "b", "--backend", "flaky", "--max-failure-rate", 0.2,
                             capsys=capsys)
    assert rc == 1 and "0 done" in out and "3 over the failure limit" in out and "3 shard(s) over" in err
    assert sorted(os.listdir(tmp_path / "b")) == [f"shard-00000{i}.tar{PARTIAL}" for i in range(3)]


def test_a_shard_over_the_failure_limit_stays_partial_exits_1_with_one_line_and_is_redone(world, tmp_path, capsys,
                                                                                          caplog):
    inputs = tree_bytes(world / "train")
    args = [world / "train", tmp_path, "--backend", "flaky", "--progress", "lines"]
    rc, out, err = recaption(*args, "--max-failure-rate", 0.3, capsys=capsys)  # shard 0: 3 of 8 failed
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and [line for line in lines if line.startswith("compclip recaption:")] == lines[-1:], err
    assert "1 shard(s) over --max-failure-rate 0.3" in lines[-1] and "shard-000000.tar: 3 of 8 samples failed" in err
    assert "2 done" in out and "1 over the failure limit" in out
    assert sorted(os.listdir(tmp_path)) == ["shard-000000.tar" + PARTIAL, "shard-000001.tar", "shard-000002.tar"]
    assert tree_bytes(world / "train") == inputs  # the inputs are read only
    finished = {n: (tmp_path / n).read_bytes() for n in ("shard-000001.tar", "shard-000002.tar")}
    rc, out, err = recaption(*args, "--max-failure-rate", 0.3, capsys=capsys)  # the same command: still over
    assert rc == 1 and "2 already finished (skipped)" in out and "0 done" in out and "redoing the partial" in caplog.text
    rc, out, err = recaption(*args, "--max-failure-rate", 0.4, capsys=capsys)  # a limit the shard is within
    assert rc == 0 and "1 done, 2 already finished (skipped)" in out and err.count("compclip recaption:") == 0
    assert sorted(os.listdir(tmp_path)) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all((tmp_path / n).read_bytes() == data for n, data in finished.items())
    assert tree_bytes(world / "train") == inputs


def without_scenes(world, folder):
    """Copies of the world's training shards as real data comes: KEY.json without a scene graph."""
    folder.mkdir()
    for name in sorted(os.listdir(world / "train")):
        with tarfile.open(world / "train" / name) as src, tarfile.open(folder / name, "w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member).read()
                if member.name.endswith(".json"):
                    meta = json.loads(data)
                    del meta["scene"]
                    data = json.dumps(meta).encode()
                    member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
    return folder


def test_a_backend_that_fails_every_sample_stops_early_and_finishes_no_shard(world, tmp_path, capsys):
    real = without_scenes(world, tmp_path / "real")
    rc, out, err = recaption(real, tmp_path / "recap", "--backend", "scene", capsys=capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and out == "" and lines[-1].startswith("compclip recaption: error: the scene backend failed all "
                                                          "of its first 16 requests (16 x no scene in KEY.json")
    assert [line for line in lines if line.startswith("compclip")] == lines[-1:]
    # shard 0 (8 failures) stays partial; shard 1 brings the run to 16 failures and no answer: stopped, no shard 2
    assert os.listdir(tmp_path / "recap") == ["shard-000000.tar" + PARTIAL]
    rc, out, _ = recaption(real, tmp_path / "recap", "--backend", "echo", capsys=capsys)
    assert rc == 0 and "24 recaptioned" in out and "3 done, 0 already finished" in out


def test_a_foreign_or_failed_output_is_redone_and_said_so(world, tmp_path, capsys, caplog):
    real, out_dir = without_scenes(world, tmp_path / "real"), tmp_path / "recap"
    rc, out, _ = recaption(real, out_dir, "--backend", "scene", "--max-failure-rate", 1, capsys=capsys)
    assert rc == 0 and "24 failed" in out and "3 done" in out  # a limit of 1 accepts shards that failed throughout
    rc, out, _ = recaption(real, out_dir, "--backend", "echo", capsys=capsys)
    assert rc == 0 and "3 done, 0 already finished (skipped), 3 redone" in out
    assert "shard-000000.tar: written by another job (backend 'scene'" in out
    assert "written by another job (backend 'scene', model 'synth.captions.recaption'" in caplog.text
    provenance = {json.loads(d)["recaption_provenance"]["backend"] for s in sorted(os.listdir(out_dir))
                  for n, d in members(out_dir / s) if n.endswith(".json")}
    assert provenance == {"echo"}
    rc, out, _ = recaption(real, out_dir, "--backend", "echo", capsys=capsys)
    assert rc == 0 and "0 done, 3 already finished (skipped), 0 redone" in out
    prompt = tmp_path / "p.txt"
    prompt.write_text("Describe: {alt_text}")
    for change in (["--prompt", prompt], ["--prompt", prompt, "--fields", "txt"]):  # another prompt, other fields
        rc, out, _ = recaption(real, out_dir, "--backend", "echo", *change, capsys=capsys)
        assert rc == 0 and "3 done, 0 already finished (skipped), 3 redone" in out
    assert f"this run: backend 'echo', model 'stub', prompt {prompt_version('Describe: {alt_text}')}, fields txt)" \
           in caplog.text


def test_shard_index_split_covers_every_shard_exactly_once(world, tmp_path, capsys):
    paths = [f"s{i}.tar" for i in range(7)]
    parts = [worker_shards(paths, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(paths) and parts[1] == ["s1.tar", "s4.tar"]
    outs = []
    for i in range(2):
        rc, out, _ = recaption(world / "train", tmp_path / f"w{i}", "--backend", "scene", "--shard-index", i,
                               "--num-shards", 2, capsys=capsys)
        assert rc == 0
        outs.append(set(os.listdir(tmp_path / f"w{i}")))
    assert outs[0] == {"shard-000000.tar", "shard-000002.tar"} and outs[1] == {"shard-000001.tar"}


def _file(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 123
    tar.addfile(info, io.BytesIO(data))


def test_odd_samples_are_copied_as_they_are_and_counted(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    with tarfile.open(src / "odd.tar", "w") as tar:
        _file(tar, "a.jpg", b"JPEGBYTES")  # no json: gets one
        _file(tar, "a.txt", b"red cube")
        _file(tar, "b.txt", b"no picture")  # no image: copied, recaption_error
        _file(tar, "b.json", b'{"title": "t"}')
        _file(tar, "c.png", b"PNG")  # unreadable json: copied byte for byte, counted
        _file(tar, "c.json", b"{not json")
    rc, out, _ = recaption(src, tmp_path / "out", "--backend", "echo", "--max-failure-rate", 1, capsys=capsys)
    assert rc == 0 and "3 samples, 1 recaptioned, 2 failed" in out and "bad KEY.json" in out
    got = dict(members(tmp_path / "out" / "odd.tar"))
    assert list(got) == ["a.jpg", "a.txt", "a.json", "b.txt", "b.json", "c.png", "c.json"]
    assert {h[1:] for h in headers(tmp_path / "out" / "odd.tar")} == {(123, 0o644, 0, 0, "", "", tarfile.REGTYPE)}
    assert got["a.jpg"] == b"JPEGBYTES" and got["c.json"] == b"{not json" and got["c.png"] == b"PNG"
    a = json.loads(got["a.json"])
    assert "Alt-text: red cube\nTitle: \n" in a["recaption"] and a["recaption"].endswith("[jpg 9]")
    b = json.loads(got["b.json"])
    assert b["title"] == "t" and b["recaption_error"].startswith("no image file") and "recaption" not in b


def test_custom_prompt_fills_the_chosen_fields(world, tmp_path, capsys):
    prompt = tmp_path / "p.txt"
    prompt.write_text("alt={alt_text} member={member}")
    rc, _, _ = recaption(world / "train/shard-000000.tar", tmp_path / "o", "--backend", "echo", "--prompt", prompt,
                         "--fields", "txt,member", capsys=capsys)
    assert rc == 0
    meta = json.loads(dict(members(tmp_path / "o/shard-000000.tar"))["000000001.json"])
    assert meta["recaption"].startswith(f"alt={meta['alt_text']} member={meta['member']} [jpg ")
    assert meta["recaption_provenance"]["prompt_version"] == prompt_version(prompt.read_text())
    with pytest.raises(ValueError, match=r"uses \{title\} but --fields txt fills only"):
        load_template(None, ["txt"])


def damage_a_middle_header(path):
    """Flip a byte of the name in the header of the shard's 5th member: the checksum fails, so Python's tar reader
    would quietly take the damaged header for the end of the archive; the archive still ends as a whole one does."""
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[4].offset
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_unreadable_input_shard_is_reported_and_the_others_are_done(world, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("shard-000000.tar", "shard-000001.tar"):
        (src / name).write_bytes((world / "train" / name).read_bytes())
    damage_a_middle_header(src / "shard-000001.tar")  # found only when read: the cheap checks up front pass
    rc, out, err = recaption(src, tmp_path / "out", "--backend", "scene", capsys=capsys)
    assert rc == 1 and "1 unreadable" in out and "unreadable input shard" in out and "shard-000001.tar" in out
    assert "cut short or damaged at byte" in out and "1 input shard(s) unreadable" in err.splitlines()[-1]
    assert os.listdir(tmp_path / "out") == ["shard-000000.tar"]
    os.remove(src / "shard-000000.tar")  # only the damaged one: nothing is written, not even the output folder
    rc, out, err = recaption(src, tmp_path / "new" / "out", "--backend", "scene", capsys=capsys)
    assert rc == 1 and "1 unreadable" in out and not (tmp_path / "new").exists()


@pytest.mark.parametrize("args, message", [
    (["{missing}", "{out}", "--backend", "scene"], "nope.tar' matches no file"),
    (["{input}", "{out}", "--backend", "scnee"], "unknown recaption backend 'scnee' (did you mean 'scene'?)"),
    (["{input}", "{out}", "--backend", "scene", "--temperature", "0.5"], "backend 'scene' does not take --temperature"),
    (["{input}", "{input}", "--backend", "scene"], "holds input shards"),
    (["{input}", "{out}", "--backend", "scene", "--shard-index", "2", "--num-shards", "2"], "need 0 <= --shard-index"),
])
def test_bad_inputs_fail_with_one_line(world, tmp_path, capsys, args, message):
    args = [a.format(input=world / "train", missing=tmp_path / "nope.tar", out=tmp_path / "out") for a in args]
    rc, _, err = recaption(*args, capsys=capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_progress_bar_and_plain_lines_both_report_rates(world, tmp_path, capsys, caplog):
    rc, _, err = recaption(world / "train", tmp_path / "bar", "--backend", "scene", "--progress", "bar", capsys=capsys)
    assert rc == 0 and "24/24" in err and "sample/s" in err
    rc, _, _ = recaption(world / "train", tmp_path / "lines", "--backend", "scene", "--progress", "lines",
                         capsys=capsys)
    assert rc == 0 and "3/3 shards" in caplog.text and "samples/s, ETA" in caplog.text


class UnbuiltBackend:
    """Fails the test if built: errors in the command line must stop the run before any backend loads a model."""

    def __init__(self):
        raise AssertionError("the backend was built before a command-line error was reported")


def shard_paths(world):
    return sorted(str(world / "train" / n) for n in os.listdir(world / "train"))


def test_several_inputs_give_the_bytes_of_the_joined_form(world, tmp_path, capsys):
    shards = shard_paths(world)
    assert len(shards) == 3  # what `world/train/*.tar` expands to
    common = ["--backend", "scene", "--seed", "3", "--provenance-time", TIME]
    rc, out, _ = recaption(*shards, tmp_path / "separate", *common, capsys=capsys)
    assert rc == 0 and "24 samples, 24 recaptioned" in out and "3 done" in out
    rc, _, _ = recaption("::".join(shards), tmp_path / "joined", *common, capsys=capsys)
    assert rc == 0
    rc, _, _ = recaption(shards[0], "--backend", "scene", shards[1], "::".join(shards[2:]), tmp_path / "mixed",
                         *common[2:], capsys=capsys)  # options between the paths, forms mixed
    assert rc == 0
    joined = tree_bytes(tmp_path / "joined")
    assert tree_bytes(tmp_path / "separate") == joined == tree_bytes(tmp_path / "mixed")
    assert sorted(joined) == [os.path.basename(s) for s in shards]


def test_a_shell_glob_is_read_as_several_inputs(world, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(world / "train", src)
    line = f"{sys.executable} -m lit_compclip.cli recaption {src}/*.tar {tmp_path}/out --backend scene --progress lines"
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "24 samples, 24 recaptioned" in done.stdout, done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(src))
    forgot = subprocess.run(["bash", "-c", line.replace(f" {tmp_path}/out", "")], capture_output=True, text=True,
                            timeout=120)  # the glob's last shard would be taken for OUTPUT_DIR
    assert forgot.returncode == 2 and forgot.stderr.count("\n") == 1 and "is an existing .tar file" in forgot.stderr


def test_a_shard_given_twice_is_recaptioned_once_with_a_warning(world, tmp_path, capsys, caplog):
    shards = shard_paths(world)
    common = ["--backend", "scene", "--provenance-time", TIME]
    rc, _, _ = recaption(world / "train", tmp_path / "once", *common, capsys=capsys)
    assert rc == 0
    rc, out, _ = recaption(world / "train", shards[1], f"{shards[0]}::{shards[2]}", tmp_path / "twice", *common,
                           capsys=capsys)  # overlapping globs
    assert rc == 0 and "3 done" in out and "3 input shard(s) given more than once" in caplog.text
    assert tree_bytes(tmp_path / "twice") == tree_bytes(tmp_path / "once")


def test_output_inside_an_input_folder_is_allowed_and_resumes(world, tmp_path, capsys):
    src = tmp_path / "in"
    shutil.copytree(world / "train", src)
    rc, _, _ = recaption(src, src / "recap", "--backend", "scene", capsys=capsys)
    assert rc == 0 and len(os.listdir(src / "recap")) == 3
    rc, out, _ = recaption(*sorted(src.glob("*.tar")), src / "recap", "--backend", "scene", capsys=capsys)
    assert rc == 0 and "3 already finished" in out  # the folder spec reads src/*.tar only, not src/recap


@pytest.mark.parametrize("args, message", [
    (["{s0}", "--backend", "unbuilt"], "OUTPUT_DIR is missing: give the output folder after the input shards"),
    (["{s0}", "{s1}", "--backend", "unbuilt"], "OUTPUT_DIR '{s1}' is an existing .tar file, not a folder"),
    (["{s0}", "{tmp}/new.tar", "--backend", "unbuilt"], "is a name ending in .tar, not a folder"),
    (["{s0}", "{tmp}/notes.txt", "--backend", "unbuilt"], "OUTPUT_DIR '{tmp}/notes.txt' is a file, not a folder"),
    (["{s0}", "{s1}", "{train}", "--backend", "unbuilt"], "holds input shards"),
    (["{s0}", "{tmp}/nope.tar", "{tmp}/out", "--backend", "unbuilt"], "nope.tar' matches no file"),
    (["{s0}", "{tmp}/other", "{tmp}/out", "--backend", "unbuilt"], "share the file name 'shard-000000.tar'"),
    (["{s0}", "{tmp}/out", "--backend", "scene", "--num-shards", "0"], "need 0 <= --shard-index"),
])
def test_bad_several_input_command_lines_fail_with_one_line(world, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setitem(BACKENDS, "unbuilt", f"{__name__}:UnbuiltBackend")
    (tmp_path / "notes.txt").write_text("not a folder")
    (tmp_path / "other").mkdir()
    shutil.copy(world / "train" / "shard-000000.tar", tmp_path / "other")  # another file with the same name
    names = {"s0": shard_paths(world)[0], "s1": shard_paths(world)[1], "train": world / "train", "tmp": tmp_path}
    rc, _, err = recaption(*[a.format(**names) for a in args], capsys=capsys)
    assert rc == 2 and message.format(**names) in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_unwritable_output_folder_is_refused_before_the_backend_is_built(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(BACKENDS, "unbuilt", f"{__name__}:UnbuiltBackend")
    locked = tmp_path / "locked"
    locked.mkdir()
    mkstemp = tempfile.mkstemp  # root may write anywhere, so the write is denied here, as a non-root user sees it

    def denied(*args, dir=None, **kwargs):
        if str(dir) == str(locked):
            raise PermissionError(13, "Permission denied")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    for out in (locked, locked / "new" / "out"):
        rc, out_text, err = recaption(world / "train", out, "--backend", "unbuilt", capsys=capsys)
        assert rc == 2 and err.count("\n") == 1 and f"cannot be written (creating a file in '{locked}': " \
            "Permission denied)" in err, err
    assert os.listdir(locked) == []
