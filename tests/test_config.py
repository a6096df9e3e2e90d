import glob
import json

import pytest

from lit_compclip.cli import main
from lit_compclip.config import ConfigError, load_config, normalise_overrides
from helpers import DEFAULT


def write(tmp_path, text, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_are_valid_and_every_experiment_file_loads():
    cfg = load_config([DEFAULT])
    assert cfg.model.text.tower == "sentence_transformers"
    for path in sorted(glob.glob("experiments/*.yaml")):
        load_config([path])


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "data:\n  batchsize: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config([path])
    msg = str(e.value)
    assert "data.batchsize" in msg and path in msg and "batch_size" in msg and "\n" not in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config([DEFAULT], ["data.batch_size=many"])


def test_missing_value_names_key(tmp_path):
    path = write(tmp_path, "name:\n")  # YAML null for a required string
    with pytest.raises(ConfigError, match="'name' in .* has no value"):
        load_config([path])


def test_missing_experiment_file():
    with pytest.raises(ConfigError, match="not found: nope.yaml"):
        load_config(["nope.yaml"])


def test_override_forms_are_equivalent():
    assert normalise_overrides(["--optim.lr", "0.1", "--seed=3", "name=x"]) == ["optim.lr=0.1", "seed=3", "name=x"]
    cfg = load_config([DEFAULT], ["--optim.lr", "0.5", "--data.batch_size=7"])
    assert cfg.optim.lr == 0.5 and cfg.data.batch_size == 7


def test_later_sources_win(tmp_path):
    a = write(tmp_path, "optim: {lr: 0.1}\nseed: 5\n", "a.yaml")
    b = write(tmp_path, "optim: {lr: 0.2}\n", "b.yaml")
    cfg = load_config([DEFAULT, a, b], ["seed=9"])
    assert (cfg.optim.lr, cfg.seed) == (0.2, 9)


def test_new_text_tower_replaces_options_instead_of_merging():
    cfg = load_config([DEFAULT], ["model.text.tower=scratch", "model.text.width=64"])
    assert dict(cfg.model.text) == {"tower": "scratch", "width": 64}


def test_text_tower_options_are_checked_against_its_constructor():
    with pytest.raises(ConfigError, match="model.text.*unfreeze_layer.*did you mean 'unfreeze_layers'"):
        load_config([DEFAULT], ["model.text.unfreeze_layer=3"])
    with pytest.raises(ConfigError, match="unknown text tower 'scrach'.*did you mean 'scratch'"):
        load_config([DEFAULT], ["model.text.tower=scrach"])


def test_probe_options_and_names_are_checked():
    with pytest.raises(ConfigError, match="probes.suites.sugarcrepe.*imgs"):
        load_config([DEFAULT], ["probes.suites.sugarcrepe.imgs=x"])
    with pytest.raises(ConfigError, match="unknown probe 'sugarcrep'"):
        load_config([DEFAULT], ["probes.suites.x.type=sugarcrep"])


def test_values_are_range_checked():
    with pytest.raises(ConfigError, match="data.caption_fields.recaption"):
        load_config([DEFAULT], ["data.caption_fields.recaption=-1"])
    with pytest.raises(ConfigError, match="data.samples_per_epoch"):
        load_config([DEFAULT], ["data.resampled=true"])
    with pytest.raises(ConfigError, match="wandb.mode"):
        load_config([DEFAULT], ["wandb.mode=sometimes"])
    for key, bad in (("pool", "max"), ("pos_embed", "rope"), ("stem", "pixels")):
        with pytest.raises(ConfigError, match=rf"'model.image.{key}': choose"):
            load_config([DEFAULT], [f"model.image.{key}={bad}"])
    with pytest.raises(ConfigError, match="'model.image.stem': a conv stem has no pretrained weights"):
        load_config([DEFAULT], ["model.image.pretrained=true"])
    assert load_config([DEFAULT], ["model.image.pretrained=true", "model.image.stem=patch"]).model.image.stem == "patch"
    # the stem_* keys shape only the conv stem: changed with the patchify stem they would be silently ignored
    for key, value in (("stem_convs", "[0,0,1]"), ("stem_norm", "batch"), ("stem_groups", "4")):
        with pytest.raises(ConfigError, match=rf"'model.image.{key}': shapes the conv stem only"):
            load_config([DEFAULT], ["model.image.stem=patch", f"model.image.{key}={value}"])
        assert load_config([DEFAULT], [f"model.image.{key}={value}"]).model.image.stem == "conv"
    for bad in ("-1", "1.5", "some", "true"):
        with pytest.raises(ConfigError, match="'trainer.limit_val_batches': give a number of batches"):
            load_config([DEFAULT], [f"trainer.limit_val_batches={bad}"])
    for good, value in (("8", 8), ("0.25", 0.25), ("null", None)):
        assert load_config([DEFAULT], [f"trainer.limit_val_batches={good}"]).trainer.limit_val_batches == value


def test_synthetic_world_and_caption_curriculum_values_are_checked_before_anything_is_built(tmp_path, capsys):
    for override, message in (("synth.shape_twins=2", "'synth.shape_twins': shape_twins must be 0 or 1, got 2"),
                              ("synth.min_objects=3", "'synth.min_objects': need min_objects <= max_objects"),
                              ("synth.max_objects=99", "'synth.max_objects': max_objects must be <= 4, got 99"),
                              ("synth.plain_lists=2", "'synth.plain_lists': plain_lists must be 0 or 1, got 2"),
                              ("synth.trian_families=9", "unknown config key 'synth.trian_families'.*did you mean "
                                                         "'synth.train_families'"),
                              ("synth.seed=many", "bad value for config key 'synth.seed'"),
                              (("synth.plain_lists=0", "data.later_caption_fields={plain_list: 1.0}"),
                               "'data.later_caption_fields.plain_list': the synthetic world writes plain_list only "
                               "with synth.plain_lists=1 \\(it is 0\\)"),
                              ("data.later_epoch=1", "'data.later_epoch': must be >= 2"),
                              ("data.later_caption_fields={}", "'data.later_caption_fields': name at least one"),
                              ("data.later_caption_fields.x=0", "'data.later_caption_fields.x': weights must be"),
                              ("data.sentence_sample.recaption=0", "'data.sentence_sample.recaption': give the most")):
        with pytest.raises(ConfigError, match=message):
            load_config([DEFAULT], [override] if isinstance(override, str) else list(override))
    # a bad world value was a traceback from the generator, after the model was built; now one line, exit 2
    assert main(["train", DEFAULT, "synth.shape_twins=2", f"synth.out_dir={tmp_path / 'w'}",
                 f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "synth.shape_twins" in err and not (tmp_path / "w").exists()
    # the default's curriculum reads plain_list, which only a world built with synth.plain_lists=1 holds: naming it
    # on other shards, or on a world used as it is that was built without it, is one line
    default = {"recaption": 0.75, "plain_list": 0.25}
    assert load_config([DEFAULT]).data.later_caption_fields == default
    real = ["data.train_shards=/data/laion/{00000..00009}.tar"]
    with pytest.raises(ConfigError, match="'data.later_caption_fields.plain_list': only the synthetic world writes "
                                          "plain_list, .* set data.later_caption_fields=null"):
        load_config([DEFAULT], real)
    assert load_config([DEFAULT], [*real, "data.later_caption_fields={txt: 1.0}"]).data.later_caption_fields == \
        {"txt": 1.0}
    world = tmp_path / "built"
    world.mkdir()
    used = [f"synth.out_dir={world}", "synth.auto=false", f"data.train_shards={world}/train"]
    assert load_config([DEFAULT], used).data.later_caption_fields == default  # no manifest yet
    (world / "manifest.json").write_text(json.dumps({"format_version": 8, "args": {"plain_lists": 0}}))
    with pytest.raises(ConfigError, match="only with synth.plain_lists=1 \\(it is 0\\)"):
        load_config([DEFAULT], used)
    (world / "manifest.json").write_text(json.dumps({"format_version": 8, "args": {"plain_lists": 1}}))
    assert load_config([DEFAULT], used).data.later_caption_fields == default


def test_the_schema_is_neutral_and_the_synthetic_recipe_lives_in_the_default_experiment(tmp_path, capsys):
    # no shards named: one line saying which key; nothing synthetic is switched on by the schema
    with pytest.raises(ConfigError, match="'data.train_shards' has no value"):
        load_config()
    cfg = load_config([], ["data.train_shards=/data/shards/{000..009}.tar"])
    assert cfg.synth is None and cfg.data.group_key is None and cfg.data.later_caption_fields is None
    assert dict(cfg.probes.suites) == {} and dict(cfg.data.sentence_sample) == {} and cfg.trainer.limit_val_batches is None
    default = load_config([DEFAULT])
    assert default.synth.out_dir == "data/synth" and default.data.group_key == "family"
    assert default.data.train_shards == "data/synth/train" and default.probes.suites.whatsup.root == "data/synth/probes/whatsup"
    assert load_config([DEFAULT], ["synth.out_dir=/w"]).probes.suites.aro.root == "/w/probes/aro"  # one place
    # the synthetic commands name what is missing on a config without the world
    assert main(["synth", "data.train_shards=x.tar"]) == 2
    assert "has no `synth` section" in capsys.readouterr().err


def test_an_experiment_extends_another_relative_to_itself(tmp_path):
    (tmp_path / "sub").mkdir()
    base = write(tmp_path, "extends: " + DEFAULT + "\nname: base\noptim: {lr: 0.1}\n", "base.yaml")
    child = write(tmp_path / "sub", "extends: ../base.yaml\nname: child\ndata: {caption_fields: {alt_text: 1.0}}\n")
    cfg = load_config([child])
    assert (cfg.name, cfg.optim.lr, dict(cfg.data.caption_fields)) == ("child", 0.1, {"alt_text": 1.0})
    assert cfg.synth.out_dir == "data/synth" and load_config([base]).name == "base"
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="goes round in a circle"):
        load_config([str(tmp_path / "a.yaml")])
    with pytest.raises(ConfigError, match="not found: .*nowhere.yaml"):
        load_config([write(tmp_path, "extends: nowhere.yaml\n", "c.yaml")])


def test_cli_exits_2_with_one_line_before_building_anything(tmp_path, capsys):
    path = write(tmp_path, "trainer:\n  max_epoch: 3\n")
    assert main(["train", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trainer.max_epoch" in err and "max_epochs" in err


def test_cli_missing_shards_and_probe_files_exit_2(tmp_path, capsys):
    assert main(["train", f"data.train_shards={tmp_path}/nothing-{{000..003}}.tar", "synth.auto=false"]) == 2
    assert "nothing-" in capsys.readouterr().err
    (tmp_path / "s.tar").write_bytes(b"")
    args = ["train", f"data.train_shards={tmp_path}/s.tar", "data.val_shards=null", "probes.suites={}",
            "+probes.suites.w.type=winoground", f"probes.suites.w.examples={tmp_path}/no.jsonl",
            f"probes.suites.w.images={tmp_path}"]
    assert main([a for a in args if not a.startswith("+")] + ["probes.suites.w.type=winoground"]) == 2
    # the model is built first (its loading bar may come before); the error is the one line after it
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "error" in line] == err[-1:] and "no.jsonl" in err[-1]
    assert err[-1].startswith("compclip train: error: config key 'probes.suites.w': ")


def test_launched_ranks_reuse_rank_zeros_run_folder(tmp_path, monkeypatch):
    from lit_compclip.training.run import RUN_DIR_ENV, unique_run_dir

    cfg = load_config([DEFAULT], [f"run_dir={tmp_path}/r"])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("x")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert unique_run_dir(cfg) == f"{tmp_path}/r-2"  # rank 0 never overwrites
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(RUN_DIR_ENV, f"{tmp_path}/r-2")
    assert unique_run_dir(cfg) == f"{tmp_path}/r-2"  # rank 1 joins rank 0's folder


def test_an_experiments_caption_fields_replace_the_default_mixture(tmp_path):
    exp = tmp_path / "alt.yaml"
    exp.write_text(f"extends: {DEFAULT}\ndata:\n  caption_fields: {{alt_text: 1.0}}\n")
    assert dict(load_config([str(exp)]).data.caption_fields) == {"alt_text": 1.0}
    assert dict(load_config([DEFAULT], ["data.caption_fields={txt: 1.0}"]).data.caption_fields) == {"txt": 1.0}
    # a dotted key adds one source to the mixture instead
    mixed = load_config([str(exp)], ["data.caption_fields.recaption=0.5"]).data.caption_fields
    assert dict(mixed) == {"alt_text": 1.0, "recaption": 0.5}


def test_trainer_values_lightning_would_refuse_fail_in_the_config_check():
    for override, key in (("trainer.strategy=bogus", "trainer.strategy"),
                          ("trainer.precision=17-mixed", "trainer.precision"),
                          ("trainer.accelerator=quantum", "trainer.accelerator"),
                          ("trainer.devices=0", "trainer.devices"),
                          ("trainer.devices=-2", "trainer.devices"), ("trainer.devices=[]", "trainer.devices"),
                          ("trainer.devices=two", "trainer.devices"), ("trainer.num_nodes=0", "trainer.num_nodes"),
                          ("trainer.max_epochs=-3", "trainer.max_epochs"), ("trainer.max_steps=0", "trainer.max_steps"),
                          ("optim.lr=-0.1", "optim.lr"), ("optim.betas=[0.9,1.5]", "optim.betas"),
                          ("model.embed_dim=0", "model.embed_dim"), ("model.image.depth=0", "model.image.depth"),
                          ("model.image.crop_scale=[0.5,2.0]", "model.image.crop_scale"),
                          ("model.text.unfreeze_layers=-1", "model.text.unfreeze_layers")):
        with pytest.raises(ConfigError, match=rf"'{key}'"):
            load_config([DEFAULT], [override])
    # what Lightning takes passes: names in any case, device forms, precision aliases, max_steps with max_epochs=-1
    for good in (["trainer.strategy=DDP"], ["trainer.strategy=ddp_find_unused_parameters_true"],
                 ["trainer.accelerator=gpu"], ["trainer.accelerator=cpu"], ["trainer.devices=auto"],
                 ["trainer.devices=-1"], ["trainer.devices=[0,1]"], ["trainer.devices=0,1"], ["trainer.devices=4"],
                 ["trainer.precision=16"], ["trainer.precision=bf16-mixed"], ["trainer.precision=null"],
                 ["trainer.max_epochs=-1", "trainer.max_steps=10"]):
        load_config([DEFAULT], good)


def test_tower_and_probe_option_types_are_checked():
    with pytest.raises(ConfigError, match=r"model.text.unfreeze_layers='abc': must be int"):
        load_config([DEFAULT], ["model.text.unfreeze_layers=abc"])
    with pytest.raises(ConfigError, match=r"model.text.grad_checkpointing=1: must be bool"):  # an int is no bool
        load_config([DEFAULT], ["model.text.grad_checkpointing=1"])
    with pytest.raises(ConfigError, match=r"probes.suites.aro.batch_size='x': must be int"):
        load_config([DEFAULT], ["probes.suites.aro.batch_size=x"])
    with pytest.raises(ConfigError, match=r"'model.text.tower': unknown text tower 'bogus'"):
        load_config([DEFAULT], ["model.text.tower=bogus"])
    # an int where a float is expected, and null where None is allowed, pass
    cfg = load_config([DEFAULT], ["model.text.cache_budget_gb=2", "model.text.cache_dir=null"])
    assert cfg.model.text.cache_budget_gb == 2 and cfg.model.text.cache_dir is None


def test_build_errors_become_one_line_naming_the_key_and_bugs_pass():
    from lit_compclip.config import reported_as

    def raised(error, key="model", **kw):
        with pytest.raises(BaseException) as e:
            with reported_as(key, **kw):
                raise error
        return e.value

    e = raised(RuntimeError("weights missing\n  more detail"))
    assert isinstance(e, ConfigError) and str(e) == "config key 'model': weights missing"
    assert str(raised(ValueError("model.text.cache_dir: needs BERT"))) == "model.text.cache_dir: needs BERT"
    assert str(raised(KeyError("qwen9"))) == "config key 'model': qwen9"  # no quotes from KeyError's str()
    assert str(raised(OSError(""))) == "config key 'model': OSError"
    # the option a Lightning message is about, by its name or by its value
    flags = {"strategy": "deepspeed", "accelerator": "cpu", "devices": [0, 1]}
    assert "'trainer.devices'" in str(raised(TypeError("`devices` selected with `CPUAccelerator` should be an int"),
                                             "trainer", errors=(TypeError,), options=flags))
    assert "'trainer.strategy'" in str(raised(ValueError("To use the `DeepSpeedStrategy`, install it"), "trainer",
                                              options=flags))
    assert "'trainer': no flag" in str(raised(ValueError("no flag"), "trainer", options=flags))
    for bug in (TypeError("bad call"), AttributeError("x"), AssertionError("invariant")):  # not user errors
        assert raised(bug) is bug


@pytest.mark.parametrize("override, problem", [
    ("probes.suites={sugarcrepe:{annotations:sc,images:sc/images}}", "found unexpected ':'"),  # no space after ':'
    ("name=[unclosed", "did not find expected ',' or ']'"),
])
def test_an_override_whose_value_is_not_yaml_is_one_line_and_exit_2(override, problem, capsys):
    assert main(["config", DEFAULT, override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"compclip config: error: override {override!r}: its value is not valid YAML ({problem})")
