"""Probes close the loop: each export of a checkpoint, scored through its own encoder spec (`compclip:FOLDER` for the
native folder, `sentence_transformers:FOLDER`), gives the checkpoint's probe results example by example (the
open_clip export's test is in test_export_open_clip.py); a sentence-transformers folder that would run code from
outside sentence-transformers and this package is refused before it is loaded."""

import json

import pytest

from helpers import assert_same_records, one_line_error, probe_records
from lit_compclip.cli import main
from lit_compclip.errors import ConfigError
from lit_compclip.export import export_model


@pytest.fixture(scope="module")
def checkpoint_records(vit_checkpoint, world, tmp_path_factory):
    # vit_checkpoint keeps no text cache: the checkpoint is scored in float32 throughout, as an export is
    return probe_records(world, tmp_path_factory.mktemp("ckpt") / "dump", ["--ckpt", str(vit_checkpoint)])


@pytest.mark.parametrize("fmt, spec", [("native", "compclip:{}"), ("sentence_transformers", "sentence_transformers:{}")])
def test_an_export_scores_every_probe_example_as_its_checkpoint(fmt, spec, vit_checkpoint, checkpoint_records, world,
                                                                tmp_path):
    out = tmp_path / fmt
    export_model(str(vit_checkpoint), str(out), fmt)
    assert_same_records(checkpoint_records, probe_records(world, tmp_path / "dump", ["--encoder", spec.format(out)]))


def test_probe_ckpt_takes_a_native_export_folder_and_writes_beside_nothing_of_it(tiny_checkpoint, world, tmp_path,
                                                                                monkeypatch, capsys):
    out = tmp_path / "exported"
    export_model(str(tiny_checkpoint), str(out), "native")
    monkeypatch.chdir(tmp_path)
    p = world / "probes" / "sugarcrepe"
    assert main(["probe", "--ckpt", "exported", "--probe", "sugarcrepe", f"annotations={p}", f"images={p}/images",
                 "subsets=[swap_att]", "limit=2"]) == 0
    assert json.loads((tmp_path / "runs" / "probe-compclip_exported" / "probes.json").read_text())[
        "probe/sugarcrepe/n"] == 2
    assert sorted(q.name for q in out.iterdir()) == sorted(["README.md", "compclip_config.json", "model.safetensors",
                                                           "preprocess.json", "text"])


def _st_folder(tmp_path, modules: list[dict], extra: dict[str, str] = None):
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    for name, text in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("modules, extra, message", [
    ([{"idx": 0, "name": "0", "path": "", "type": "evil.Module"}], {}, "module classes ['evil.Module']"),
    ([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.router.Router"}],
     {"router_config.json": json.dumps({"types": {"a": "mypkg.Image"}, "structure": {}})},
     "module classes ['mypkg.Image']"),
    ([], {"0_Transformer/modeling_x.py": "import os"}, "Python files ['0_Transformer/modeling_x.py']"),
    ([], {"0_Transformer/config.json": json.dumps({"auto_map": {"AutoModel": "m.M"}})},
     "auto_map in ['0_Transformer/config.json']"),
])
def test_a_folder_that_would_run_foreign_code_is_refused_before_loading(modules, extra, message, tmp_path,
                                                                        monkeypatch):
    import sentence_transformers

    def never(*args, **kwargs):
        raise AssertionError("the folder was loaded")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", never)
    from lit_compclip.encoders import build_encoder

    folder = _st_folder(tmp_path, modules, extra)
    with pytest.raises(ConfigError) as e:
        build_encoder(f"sentence_transformers:{folder}", device="cpu")
    one_line_error(e, "refused, loading it would run code from outside", message)


def test_a_folder_without_modules_json_is_one_line_exit_2(tmp_path, capsys):
    assert main(["probe", "--encoder", f"sentence_transformers:{tmp_path}", "--probe", "aro", "root=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a sentence-transformers folder (no modules.json)" in err, err
