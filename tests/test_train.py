"""Training on generated nuclei: the loss drops, OOF mAP clears a bar, frozen stages freeze, resume continues."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import write_synthetic_cache
from nuclei.checkpoint import load_checkpoint
from nuclei.cli import main
from nuclei.config import load_config
from nuclei.folds import stratified_folds, write_folds
from nuclei.train import FoldTrainer, stage_of

TINY = [
    "data.cache=cache", "data.train_split=train", "folds.k=2", "folds.run=[0]",
    "model.arch=plain_unet", "model.plain_base=8", "model.activation=relu",
    "augment.crop_size=64", "augment.emboss=0", "augment.pixel_dropout=0", "augment.perspective=0",
    "augment.grid_distortion=0", "augment.channel_shuffle=0",
    "train.batch_size=8", "train.crops_per_epoch=96", "train.workers=0", "train.channel_weights=[1,1,1]",
    "infer.tta=1", "postprocess.min_size=5",
]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    cache = write_synthetic_cache(tmp_path / "cache" / "train", n_images=12)
    ids = [f"synth{i:03d}" for i in range(12)]
    write_folds(tmp_path / "folds" / "folds.csv", stratified_folds(ids, ["fluorescence"] * 12, k=2))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores, 2 OpenMP threads spin against each other
    yield tmp_path
    torch.set_num_threads(threads)


def test_stage_of_walks_the_two_stage_schedule():
    stages = [{"epochs": 5}, {"epochs": 15}]
    assert stage_of(0, stages) == (0, 0)
    assert stage_of(4, stages) == (0, 4)
    assert stage_of(5, stages) == (1, 0)
    assert stage_of(19, stages) == (1, 14)
    with pytest.raises(ValueError):
        stage_of(20, stages)


def test_tiny_config_learns_and_scores_oof(workdir):
    stages = "train.stages=[{epochs: 1, lr: 0.01, freeze_encoder: true}, {epochs: 5, lr: 0.01, freeze_encoder: false}]"
    args = [f"--set={s}" for s in TINY + [stages, "experiment=tiny"]]
    assert main(["train", *args]) == 0
    log = pd.read_csv(workdir / "folds" / "tiny" / "log_fold0.csv")
    assert len(log) == 6
    assert log["train_loss"].iloc[-1] < 0.6 * log["train_loss"].iloc[0]
    assert (workdir / "folds" / "tiny" / "curves_fold0.png").stat().st_size > 1000
    assert main(["oof", *args]) == 0
    result = json.loads((workdir / "folds" / "tiny" / "oof.json").read_text())
    assert result["n_images"] == 6
    # Separated bright discs: a model that learned anything finds most of them at IoU > 0.5.
    assert result["oof_map"] > 0.6, result


def test_frozen_stage_keeps_encoder_fixed(workdir):
    cfg = load_config(None, TINY + ["experiment=frozen", "train.stages=[{epochs: 1, lr: 0.01, freeze_encoder: true}]"])
    trainer = FoldTrainer(cfg, 0, Path("folds/frozen"))
    trainer.run()
    trained = load_checkpoint(trainer.checkpoint)["model"]
    torch.manual_seed(cfg["train"]["seed"])
    from nuclei.models.build import build_model

    initial = build_model(cfg["model"]).state_dict()
    encoder_keys = [k for k in initial if k.startswith("encoder.")]
    decoder_keys = [k for k in initial if k.startswith("decoder.") and initial[k].dtype.is_floating_point]
    assert encoder_keys and decoder_keys
    assert all(torch.equal(initial[k], trained[k]) for k in encoder_keys)  # weights and BN statistics
    assert any(not torch.equal(initial[k], trained[k]) for k in decoder_keys)


def test_resume_continues_from_saved_epoch(workdir):
    two = "train.stages=[{epochs: 1, lr: 0.01, freeze_encoder: true}, {epochs: 1, lr: 0.01, freeze_encoder: false}]"
    three = "train.stages=[{epochs: 1, lr: 0.01, freeze_encoder: true}, {epochs: 2, lr: 0.01, freeze_encoder: false}]"
    cfg = load_config(None, TINY + ["experiment=resume", two])
    FoldTrainer(cfg, 0, Path("folds/resume")).run()
    first = load_checkpoint("folds/resume/fold0.pt")
    assert first["epoch"] == 2
    # Interrupted run of a longer schedule: resume keeps epochs 1-2 and adds only epoch 3.
    cfg = load_config(None, TINY + ["experiment=resume", three])
    trainer = FoldTrainer(cfg, 0, Path("folds/resume"))
    assert not trainer.finished()
    trainer.run(resume=True)
    resumed = load_checkpoint("folds/resume/fold0.pt")
    assert resumed["epoch"] == 3
    assert [row["epoch"] for row in resumed["log"]] == [1, 2, 3]
    assert pd.DataFrame(resumed["log"][:2]).equals(pd.DataFrame(first["log"]))  # NaN-aware comparison
    assert trainer.finished()
    log = pd.read_csv("folds/resume/log_fold0.csv")
    assert log["epoch"].tolist() == [1, 2, 3]


def test_two_runs_of_one_config_are_identical(workdir):
    stages = "train.stages=[{epochs: 2, lr: 0.01, freeze_encoder: false}]"
    logs = []
    for name in ("a", "b"):
        cfg = load_config(None, TINY + [f"experiment={name}", stages])
        FoldTrainer(cfg, 0, Path(f"folds/{name}")).run()
        logs.append(pd.read_csv(f"folds/{name}/log_fold0.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(logs[0], logs[1])


def test_v1_plus_v9_split_never_trains_on_held_out_images(tmp_path, monkeypatch):
    """Leakage guard end to end: crops of a held-out V1 image never reach the training samples of that fold."""
    from test_v9 import write_folder_source, write_kaggle_train

    from nuclei.data.cache import CachedDataset
    from nuclei.data.prepare import prepare_split
    from nuclei.data.v9 import build_v9
    from nuclei.train import split_samples

    ids = [f"img{i}" for i in range(6)]
    write_kaggle_train(tmp_path / "raw", ids)
    write_folder_source(tmp_path / "external", 2)
    monkeypatch.chdir(tmp_path)
    prepare_split("raw", "stage1_train", "cache", workers=1)
    folds = stratified_folds(ids, ["fluorescence"] * 6, k=2)
    write_folds("folds/folds.csv", folds)
    sources = [{"kind": "kaggle", "path": "raw", "name": "kaggle", "weight": 0.5},
               {"kind": "folder", "path": "external", "name": "ext", "weight": 0.5}]
    build_v9(sources, "cache/v9", crop_size=128, stride=128, min_foreground=0.0, folds=folds, n_folds=2)
    cfg = load_config(None, ["data.dataset=v1+v9", "data.cache=cache", "folds.k=2"])
    cfg["data"]["v9"]["sources"] = sources
    v9_index = CachedDataset("cache/v9").index.set_index("image_id")
    fold_of = dict(zip(folds["image_id"], folds["fold"]))
    for held_out in (0, 1):
        train, val = split_samples(cfg, held_out)
        held_ids = {i for i, f in fold_of.items() if f == held_out}
        assert {s.image_id for s in val} == held_ids
        v1 = [s for s in train if s.source == "v1"]
        crops = [s for s in train if s.source != "v1"]
        assert {s.image_id for s in v1} == set(ids) - held_ids
        assert crops and {s.source for s in crops} == {"kaggle", "ext"}
        kaggle_parents = {v9_index.loc[s.image_id, "source_image"] for s in crops if s.source == "kaggle"}
        assert kaggle_parents and not kaggle_parents & held_ids
        assert (v9_index.loc[[s.image_id for s in crops], "fold"] != held_out).all()
