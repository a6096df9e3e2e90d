"""explore.py on hand-made data, and both notebooks executed top to bottom on a tiny trained run."""

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from helpers import DEFAULT, assert_close_by_norm, world_overrides

from lit_compclip.reports import explore
from lit_compclip.synth import explore as world
from lit_compclip.reports import explore_plots as plots

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CSV = """epoch,probe/sugarcrepe/swap_att,probe/sugarcrepe/n,step,train/loss,val/loss
0,,,9,4.2,
0,,,19,3.9,
0,,,19,,3.5
,0.5,8,20,,
1,,,39,3.1,
,0.75,8,40,,
"""


def test_nearest_matches_hand_computed_neighbours():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
    scores, idx = explore.nearest(query, keys, k=3)
    assert idx.tolist() == [[1, 2, 3], [0, 2, 3]]  # equal keys 2 and 3 keep index order
    assert torch.allclose(scores, torch.tensor([[1.0, 0.6, 0.6], [1.0, 0.8, 0.8]]))


def test_project_2d_is_centred_and_keeps_distances_of_planar_points():
    flat = torch.randn(20, 2) * torch.tensor([3.0, 1.0])
    basis = torch.linalg.qr(torch.randn(6, 2)).Q  # (6, 2) orthonormal
    emb = flat @ basis.T + 5.0  # a plane in 6-D, far from the origin
    points = explore.project_2d(emb)
    assert points.shape == (20, 2)
    assert points.mean(0).abs().max() < 1e-4
    assert_close_by_norm(torch.cdist(points, points), torch.cdist(flat, flat), 1e-4)  # distances kept
    assert points[:, 0].var() >= points[:, 1].var()  # first axis carries the most variance


def test_probe_curves_reads_lightning_csv_rows_with_empty_cells(tmp_path):
    (tmp_path / "metrics.csv").write_text(CSV)
    assert explore.probe_curves(tmp_path) == {"probe/sugarcrepe/n": [(20, 8.0), (40, 8.0)],
                                              "probe/sugarcrepe/swap_att": [(20, 0.5), (40, 0.75)]}
    losses = explore.probe_curves(tmp_path / "metrics.csv", prefix=("train/", "val/"))
    assert losses == {"train/loss": [(9, 4.2), (19, 3.9), (39, 3.1)], "val/loss": [(19, 3.5)]}


def test_curves_leave_out_the_counts_the_probe_plot_leaves_out():
    from lit_compclip.probes.report import COUNT_METRICS

    assert explore.COUNT_METRICS == COUNT_METRICS
    curves = {"r": {"probe/a/n": [], "probe/a/ties": [], "probe/a/seconds": [], "probe/a/x": [], "probe/b/t2i_r1": []}}
    assert explore.accuracy_metrics(curves) == ["probe/a/x", "probe/b/t2i_r1"]


def test_probe_curves_reads_probes_history_json(tmp_path):
    path = tmp_path / "probes_history.json"
    path.write_text(json.dumps([{"epoch": 1, "step": 20, "metrics": {"probe/aro/vg_relation": 0.25}},
                                {"epoch": 2, "step": 40, "metrics": {"probe/aro/vg_relation": 0.5}}]))
    assert explore.probe_curves(path) == {"probe/aro/vg_relation": [(20, 0.25), (40, 0.5)]}


def write_wandb_log(path: Path, records: list[bytes]) -> None:
    """The .wandb framing: header, then chunks (crc, length, type) that never cross a 32 KiB block."""
    out, block = bytearray(b":W&B\xe1\xbe\x00"), 32768
    for data in records:
        first = True
        while True:
            room = block - len(out) % block
            if room < 7:
                out += b"\0" * room
                continue
            piece, data = data[:room - 7], data[room - 7:]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece), kind) + piece
            first = False
            if not data:
                break
    path.write_bytes(bytes(out))


def test_wandb_offline_history_is_read_across_block_boundaries(tmp_path):
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

    def history(step, **items):
        record = pb.Record()
        for key, value in {"trainer/global_step": step, **items}.items():
            record.history.item.add(key=key, value_json=json.dumps(value))
        return record.SerializeToString()

    table = {"_type": "table", "rows": "x" * 70000}  # spans three blocks; not a number, so no curve
    records = [history(9, **{"train/loss": 4.0}), history(20, **{"probe/aro/vg_relation": 0.25, "failures": table}),
               history(40, **{"probe/aro/vg_relation": 0.5})]
    run = tmp_path / "wandb" / "offline-run-20260101_000000-abc"
    run.mkdir(parents=True)
    write_wandb_log(run / "run-abc.wandb", records)
    assert explore.probe_curves(run) == {"probe/aro/vg_relation": [(20, 0.25), (40, 0.5)]}
    assert explore.probe_curves(tmp_path, source="wandb", prefix="train/") == {"train/loss": [(9, 4.0)]}


def scene(colour_a="red", colour_b="white"):
    return {"objects": [{"shape": "star", "colour": colour_a, "size": "small", "bbox": [30, 10, 8, 8]},
                        {"shape": "triangle", "colour": colour_b, "size": "large", "bbox": [5, 10, 8, 8]}],
            "relations": [{"subject": 0, "relation": "right of", "object": 1}]}


def test_variant_captions_swap_the_colours_or_the_objects():
    assert world.variant_captions(scene()) == {
        "caption": "a red star on the right of a white triangle",
        "swapped_attribute": "a white star on the right of a red triangle",
        "swapped_relation": "a white triangle on the right of a red star"}


def test_variant_summary_and_failures_count_a_tie_as_a_failure():
    images = [Image.new("RGB", (4, 4)) for _ in range(3)]
    samples = [{"key": str(i), "image": im} for i, im in enumerate(images)]
    sims = {"caption": {"texts": ["c0", "c1", "c2"], "scores": torch.tensor([0.9, 0.5, 0.7])},
            "swapped_attribute": {"texts": ["a0", "a1", "a2"], "scores": torch.tensor([0.1, 0.5, 0.8])},
            "swapped_relation": {"texts": ["r0", "r1", "r2"], "scores": torch.tensor([0.1, 0.2, 0.3])}}
    assert explore.variant_summary(sims) == pytest.approx({"swapped_attribute": 1 / 3, "swapped_relation": 1.0})
    failures = explore.heldout_failures(samples, sims, "swapped_attribute", k=5)
    assert [f["lines"] for f in failures] == [["true: c2", "won: a2"], ["true: c1", "won: a1"]]  # worst first
    assert explore.heldout_failures(samples, sims, "swapped_relation") == []


def test_binding_captions_give_each_family_its_two_bindings():
    samples = [{"key": "0", "family": 7, "scene": scene()}, {"key": "1", "family": 7, "scene": scene("white", "red")},
               {"key": "2", "family": 7, "scene": scene()}, {"key": "3", "family": 8, "scene": scene("blue", "red")}]
    texts, labels, groups = world.binding_captions(samples, families=1)
    assert texts == ["a red star and a white triangle", "a white star and a red triangle"]
    assert labels == ["red star + white triangle", "red triangle + white star"] and groups == [7, 7]


def test_read_heldout_groups_files_by_key_and_stops_at_limit(tmp_path):
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for key in ("000", "001", "002"):
            jpg = io.BytesIO()
            Image.new("RGB", (8, 8), "red").save(jpg, "JPEG")
            for ext, data in (("jpg", jpg.getvalue()), ("txt", f"alt {key}".encode()),
                              ("json", json.dumps({"key": key, "recaption": f"dense {key}"}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    samples = explore.read_heldout(str(tmp_path), limit=2)
    assert [s["key"] for s in samples] == ["000", "001"] and samples[0]["image"].size == (8, 8)
    assert explore.captions(samples, "recaption") == ["dense 000", "dense 001"]
    assert explore.captions(samples, "txt") == ["alt 000", "alt 001"]
    with pytest.raises(ValueError, match="no caption field 'alt_text'"):
        explore.captions(samples, "alt_text")


def test_failure_gallery_shows_the_worst_failures_first(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "im.png")
    rows = [{"id": "a", "image": str(tmp_path / "im.png"), "captions": ["t", "n"], "scores": [0.5, 0.6], "correct": False},
            {"id": "b", "image": str(tmp_path / "im.png"), "captions": ["t", "n"], "scores": [0.5, 0.9], "correct": False},
            {"id": "c", "image": str(tmp_path / "im.png"), "captions": ["t", "n"], "scores": [0.9, 0.1], "correct": True}]
    (tmp_path / "probe_records" / "aro").mkdir(parents=True)
    (tmp_path / "probe_records" / "aro" / "vg_relation.jsonl").write_text("\n".join(map(json.dumps, rows)))
    items = explore.failure_gallery(tmp_path, "aro", "vg_relation", k=5)
    assert [i["title"].split()[0] for i in items] == ["b", "a"] and items[0]["lines"] == ["true: t", "won: n"]
    with pytest.raises(FileNotFoundError, match="recorded: \\['aro/vg_relation'\\]"):
        explore.failure_gallery(tmp_path, "aro", "vg_attribution")


def test_relative_paths_resolve_from_the_repo_root_wherever_the_kernel_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPCLIP_RUN", "runs/x")
    monkeypatch.setenv("COMPCLIP_RUNS", "runs/a, /abs/b")
    root = NOTEBOOKS.parent
    assert explore.run_from_env() == root / "runs/x"
    assert explore.runs_from_env() == [root / "runs/a", Path("/abs/b")]


@pytest.mark.parametrize("call, error, message", [
    (lambda d: explore.load_run(d / "nope"), FileNotFoundError, "run folder .*nope' not found"),
    (lambda d: explore.load_run(d), FileNotFoundError, "has no config.yaml"),
    (lambda d: explore.load_checkpoint({"dir": d, "checkpoint": None}), FileNotFoundError, "no checkpoints/last.ckpt"),
    (lambda d: explore.probe_curves(d), FileNotFoundError, "holds no metrics.csv"),
    (lambda d: explore.probe_curves(d, source="tensorboard"), ValueError, "choose one of .*'wandb'"),
    (lambda d: plots.plot_curves({"r": {"probe/a/x": [(1, 0.5)]}}, ["probe/a/y"]), ValueError,
     "unknown metric 'probe/a/y'; the runs have: \\['probe/a/x'\\]"),
])
def test_user_errors_are_one_clear_line(tmp_path, call, error, message):
    with pytest.raises(error, match=message) as info:
        call(tmp_path)
    assert len(str(info.value).splitlines()) == 1


# ---- the notebooks on a tiny trained run ----

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lit_compclip.config import load_config
    from lit_compclip.synth import generate
    from lit_compclip.training.run import train

    world = tmp_path_factory.mktemp("synth") / "world"  # not the session's: 16 families keep its one epoch short
    generate(str(world), train_families=16, eval_families=4, shard_size=16, probe_size=4, plain_lists=1)
    overrides = world_overrides(world) + [
        "probes.limit=4", "trainer.max_epochs=1", "wandb.mode=offline", "model.image.img_size=32",
        "model.image.depth=1", "model.image.width=32", "model.image.heads=2", "model.embed_dim=16",
        f"run_dir={tmp_path_factory.mktemp('runs') / 'tiny'}"]
    return Path(train(load_config([DEFAULT], overrides))["run_dir"])


def execute(name: str):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} holds stored outputs"
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on a cell error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return outputs, sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.slow  # ~45 s with its run; `make test-all` runs it
def test_both_notebooks_run_top_to_bottom_on_a_tiny_run(tiny_run, monkeypatch):
    pytest.importorskip("nbclient")
    monkeypatch.setenv("COMPCLIP_RUN", str(tiny_run))
    monkeypatch.setenv("COMPCLIP_RUNS", f"{tiny_run},{tiny_run}/wandb")
    outputs, figures = execute("explore_embeddings.ipynb")
    assert figures == 7  # neighbours x2, variants, projection, three galleries
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "swapped_attribute" in text and "t2i_r1" in text
    outputs, figures = execute("compare_runs.ipynb")
    table = next(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert figures == 2 and "| tiny | tiny (W&B) |" in table and "probe/sugarcrepe/swap_att" in table
