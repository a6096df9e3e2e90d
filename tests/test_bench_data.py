"""`make bench-data` on a few JPEGs with 0, 1 and 2 loader workers: every figure written and sane, never timings; bad
arguments refused in one line."""

import json
import math

import pytest
import torch

from helpers import load_script


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_data_bench_writes_every_figure(tmp_path):
    bench = load_script("bench_data")
    out = tmp_path / "bench_data.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bench.main(["--quick", "--max-workers", "2", "--gpu-rate", "500", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 2  # its one-thread setting is undone
    finally:
        torch.set_num_threads(threads)
    r = json.loads(out.read_text())
    assert r["quick"] and r["date"] and {"cpu_count", "torch", "device"} <= set(r["machine"])
    assert r["images"]["count"] == 12 and 10 < r["images"]["mean_kb"] < 150  # real-size JPEGs, not thumbnails
    rows = r["loader"]
    assert [row["workers"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert positive(row["samples_per_s"]) and row["samples"] >= 8 and positive(row["seconds"])
        assert row["per_worker"] == row["samples_per_s"] / max(1, row["workers"])
        assert row["speedup_vs_in_process"] == pytest.approx(row["samples_per_s"] / rows[0]["samples_per_s"])
    p = r["in_process"]
    for name in ("decode", "decode_transform", "draft_decode", "draft_decode_transform"):
        assert positive(p[f"{name}_per_s"]), name
    assert p["decode_per_s"] > p["decode_transform_per_s"]  # the transform adds work to the same decode
    assert 0 < p["decode_share"]["median"] < 1 and positive(p["draft_speedup"]["median"])
    d = r["draft"]
    # half the images are 512 px on the short side: those decode at half size; the tensors stay close, not equal
    assert d["draft_px"] == 237 and 0.4 <= d["reduced_fraction"] <= 1
    for name in ("train", "eval"):
        mean, most = d[f"{name}_mean_abs_levels"], d[f"{name}_max_abs_levels"]
        assert 0 < mean < 5 and mean <= most <= 255, name
    g = r["gpu"]
    assert g["rate"] == 500 and g["workers_measured"] == 2 and r["settings"]["gpu_rate_source"] == "--gpu-rate"
    # at the per-worker rate with every worker busy, and at the single worker's
    assert g["workers_needed"] == math.ceil(500 / rows[2]["per_worker"])
    assert g["workers_needed_single_worker_rate"] == math.ceil(500 / rows[1]["per_worker"])
    assert g["keeps_up"] == (rows[2]["samples_per_s"] >= 500)
    # the loader again at the most workers with the product's data.jpeg_draft: measured, set against the plain row
    drafted = r["loader_draft"]
    assert drafted["workers"] == 2 and drafted["jpeg_draft"] == 237 and positive(drafted["samples_per_s"])
    assert drafted["speedup_vs_plain_same_workers"] == pytest.approx(drafted["samples_per_s"] / rows[2]["samples_per_s"])
    assert g["workers_needed_with_draft"] == math.ceil(500 / drafted["per_worker"])
    assert all(row["jpeg_draft"] is None for row in rows)


def test_worker_counts_run_from_in_process_to_every_core():
    counts = load_script("bench_data").worker_counts
    assert counts(16) == [0, 1, 2, 4, 8, 16] and counts(2) == [0, 1, 2] and counts(3) == [0, 1, 2, 3]
    assert counts(0) == [0]


@pytest.mark.parametrize("args", [["--batch", "0"], ["--gpu-rate", "0"], ["--gpu-rate", "nan"], ["--max-workers", "-1"],
                                  ["--images", "0"], ["--samples-per-worker", "2", "--batch", "4"],
                                  ["--out", "/nonexistent/folder/x.json"], ["--gpu", "1"]])
def test_bad_arguments_are_one_line_and_exit_2(args, capsys, tmp_path):
    bench = load_script("bench_data")
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "x.json")]
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err, err
    assert not list(tmp_path.iterdir())
