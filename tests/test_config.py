"""Config loading: defaults, unknown keys, overrides, choices, and every committed config."""
from pathlib import Path

import pytest
import yaml

from nuclei.config import DEFAULTS, dump_config, load_config
from nuclei.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("DSB_DATA", raising=False)


def write(tmp_path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load():
    cfg = load_config(None)
    assert cfg["experiment"] == "default"
    assert cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]
    assert cfg["model"]["arch"] == DEFAULTS["model"]["arch"]
    assert cfg is not DEFAULTS and cfg["train"] is not DEFAULTS["train"]  # loading never mutates the defaults


def test_file_overrides_only_what_it_names(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  batch_size: 4\naugment:\n  zoom: {p: 0.0}\n"))
    assert cfg["experiment"] == "exp"  # from the file name
    assert cfg["train"]["batch_size"] == 4
    assert cfg["train"]["lr_gamma"] == DEFAULTS["train"]["lr_gamma"]
    assert cfg["augment"]["zoom"] == {"p": 0.0, "scale": DEFAULTS["augment"]["zoom"]["scale"]}


def test_unknown_top_level_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(write(tmp_path, "trian:\n  batch_size: 4\n"))


def test_unknown_nested_key_is_named_with_its_section(tmp_path):
    with pytest.raises(ConfigError, match=r"train.*unknown key 'batchsize'"):
        load_config(write(tmp_path, "train:\n  batchsize: 4\n"))
    with pytest.raises(ConfigError, match=r"data\.v9.*unknown key 'crop'"):
        load_config(write(tmp_path, "data:\n  v9:\n    crop: 4\n"))


def test_section_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="train.*expected a mapping"):
        load_config(write(tmp_path, "train: 3\n"))


def test_set_overrides():
    cfg = load_config(None, ["train.batch_size=2", "augment.rotate.p=0", "folds.run=[0, 2]",
                             "model.encoder_weights=null"])
    assert cfg["train"]["batch_size"] == 2
    assert cfg["augment"]["rotate"]["p"] == 0
    assert cfg["folds"]["run"] == [0, 2]
    assert cfg["model"]["encoder_weights"] is None


def test_overrides_apply_after_the_file(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  batch_size: 4\n"), ["train.batch_size=8"])
    assert cfg["train"]["batch_size"] == 8


def test_bad_overrides_are_named():
    with pytest.raises(ConfigError, match="train.bogus=1.*unknown key 'bogus'"):
        load_config(None, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(None, ["train.batch_size"])


def test_scientific_notation_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string; a learning rate must not arrive as text.
    cfg = load_config(write(tmp_path, "train:\n  stages:\n    - {epochs: 1, lr: 1e-4, freeze_encoder: false}\n"),
                      ["postprocess.rw_beta=2e2"])
    assert cfg["train"]["stages"][0]["lr"] == pytest.approx(1e-4)
    assert cfg["postprocess"]["rw_beta"] == pytest.approx(200.0)


@pytest.mark.parametrize("override, name", [
    ("model.arch=resnet", "model.arch"),
    ("input.normalisation=zscore", "input.normalisation"),
    ("train.loss=focal", "train.loss"),
    ("data.dataset=v2", "data.dataset"),
    ("postprocess.method=magic", "postprocess.method"),
    ("infer.tta=3", "infer.tta"),
    ("augment.crop_size=100", "augment.crop_size"),
    ("train.channel_weights=[1, 2]", "train.channel_weights"),
])
def test_invalid_choices_rejected(override, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load_config(None, [override])


def test_per_type_and_grid_take_free_keys():
    cfg = load_config(None, ["input.per_type={fluorescence: rgb}", "tune.grid={t_mask: [0.5]}"])
    assert cfg["input"]["per_type"] == {"fluorescence": "rgb"}
    assert cfg["tune"]["grid"] == {"t_mask": [0.5]}


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="absent.yaml.*not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_config(write(tmp_path, "train: [1, 2\n", "broken.yaml"))
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n", "list.yaml"))


def test_empty_file_is_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "# nothing yet\n", "empty.yaml"))
    assert cfg["train"] == DEFAULTS["train"]
    assert cfg["experiment"] == "empty"


def test_dsb_data_environment_overrides_root(monkeypatch):
    monkeypatch.setenv("DSB_DATA", "/somewhere/dsb")
    assert load_config(None)["data"]["root"] == "/somewhere/dsb"


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.batch_size=3"])
    again = load_config(write(tmp_path, dump_config(cfg), "dumped.yaml"))
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg)) == cfg


def test_committed_configs_exist():
    assert CONFIGS, "configs/*.yaml missing"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_committed_config_loads(path):
    cfg = load_config(path)
    assert cfg["experiment"]
    assert set(cfg) == set(DEFAULTS)


def test_dsb_data_sets_the_root_but_an_explicit_override_wins(monkeypatch):
    monkeypatch.setenv("DSB_DATA", "/somewhere/dsb2018")
    assert load_config(None)["data"]["root"] == "/somewhere/dsb2018"
    assert load_config(None, ["data.root=raw"])["data"]["root"] == "raw"
