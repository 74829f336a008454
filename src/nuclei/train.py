"""Train one fold: two stages (encoder frozen, then all layers), Adam, LR x gamma every `lr_step` epochs.

Writes `fold{k}.pt` after every epoch (atomic), `log_fold{k}.csv` and `curves_fold{k}.png`; `resume` continues an
interrupted fold from its last finished epoch, and a finished fold is skipped.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from .atomic import atomic_write_text
from .augment import TypeAugment, build_augment, build_val_crop
from .checkpoint import git_commit, load_checkpoint, save_checkpoint
from .data.cache import CachedDataset
from .dataset import CropDataset, Sample, load_samples, seed_worker
from .folds import read_folds
from .losses import SegmentationLoss
from .models.build import build_model
from .models.unet import encoder_frozen
from .models.weights import imagenet_normalisation
from .normalize import normaliser_from_config
from .targets import CHANNELS

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def input_stats(cfg: dict) -> tuple[float, float]:
    """Mean and std applied after normalisation: what the pretrained encoder expects, else a symmetric [-1, 1]."""
    stats = imagenet_normalisation(cfg["model"]["encoder_weights"])
    if stats is None:
        return 0.5, 0.5
    mean, std = stats
    return float(np.mean(mean)), float(np.mean(std))


def stage_of(epoch: int, stages: list[dict]) -> tuple[int, int]:
    """(stage index, epoch within that stage) of a global epoch index."""
    for index, stage in enumerate(stages):
        if epoch < stage["epochs"]:
            return index, epoch
        epoch -= stage["epochs"]
    raise ValueError("epoch past the last stage")


def split_samples(cfg: dict, fold: int) -> tuple[list[Sample], list[Sample]]:
    """Training samples (V1 images outside the fold, plus V9 crops whose fold differs) and held-out V1 images."""
    data = cfg["data"]
    folds = read_folds(cfg["folds"]["file"])
    cache = CachedDataset(Path(data["cache"]) / data["train_split"])
    known = set(cache.ids)
    folds = folds[folds["image_id"].isin(known)]
    train_ids = folds.loc[folds["fold"] != fold, "image_id"].tolist()
    val_ids = folds.loc[folds["fold"] == fold, "image_id"].tolist()
    train: list[Sample] = []
    if data["dataset"] in ("v1", "v1+v9"):
        train += load_samples(cache, train_ids, "v1", data["v9"]["v1_weight"])
    if data["dataset"] in ("v9", "v1+v9"):
        train += v9_samples(cfg, fold)
    return train, load_samples(cache, val_ids, "v1")


def v9_samples(cfg: dict, fold: int) -> list[Sample]:
    """V9 crops allowed for this fold by the leakage guard, weighted per source."""
    from .data.v9 import training_crops

    v9 = cfg["data"]["v9"]
    cache = CachedDataset(v9["dir"])
    allowed = training_crops(cache.index, fold)
    weights = {s.get("name", s["kind"]): float(s.get("weight", 1.0)) for s in v9["sources"]}
    samples: list[Sample] = []
    for source, rows in allowed.groupby("source"):
        samples += load_samples(cache, rows["image_id"].tolist(), source, weights.get(source, 1.0))
    return samples


def make_loaders(cfg: dict, train: list[Sample], val: list[Sample], seed: int):
    normaliser = normaliser_from_config(cfg, *input_stats(cfg))
    tcfg = cfg["train"]
    augment = build_augment(cfg["augment"])
    augment.set_random_seed(seed)  # workers reseed it from the loader's generator (dataset.seed_worker)
    train_set = CropDataset(train, augment, normaliser, cfg["targets"])
    generator = torch.Generator().manual_seed(seed)
    sampler = WeightedRandomSampler([s.weight for s in train], tcfg["crops_per_epoch"], replacement=True,
                                    generator=generator)
    workers = tcfg["workers"]
    common = dict(num_workers=workers, worker_init_fn=seed_worker, persistent_workers=workers > 0,
                  pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_set, batch_size=tcfg["batch_size"], sampler=sampler, drop_last=True,
                              generator=generator, **common)
    val_set = CropDataset(val, TypeAugment(build_val_crop(cfg["augment"]["crop_size"])), normaliser, cfg["targets"])
    val_loader = DataLoader(val_set, batch_size=tcfg["batch_size"], shuffle=False, **common)
    return train_loader, val_loader


def channel_iou(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union per channel at probability 0.5, summed over the batch."""
    pred = logits > 0
    truth = target > 0
    dims = (0, 2, 3)
    return (pred & truth).sum(dims).double(), (pred | truth).sum(dims).double()


class FoldTrainer:
    def __init__(self, cfg: dict, fold: int, out_dir: Path):
        self.cfg, self.fold, self.out_dir = cfg, fold, Path(out_dir)
        self.tcfg = cfg["train"]
        self.device = resolve_device(self.tcfg["device"])
        self.checkpoint = self.out_dir / f"fold{fold}.pt"
        self.log_path = self.out_dir / f"log_fold{fold}.csv"
        self.total_epochs = sum(s["epochs"] for s in self.tcfg["stages"])
        self.amp = torch.bfloat16 if self.tcfg["amp"] == "bf16" and self.device.type == "cuda" else None
        self.memory_format = torch.channels_last if self.tcfg["channels_last"] else torch.contiguous_format

    def finished(self) -> bool:
        if not self.checkpoint.is_file():
            return False
        return load_checkpoint(self.checkpoint)["epoch"] >= self.total_epochs

    def run(self, resume: bool = False) -> Path:
        seed = self.tcfg["seed"] + self.fold
        seed_everything(seed)
        self.model = build_model(self.cfg["model"]).to(self.device).to(memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if self.tcfg["compile"] else self.model
        self.loss_fn = SegmentationLoss(self.tcfg["loss"], self.tcfg["channel_weights"]).to(self.device)
        start, log, saved = 0, [], None
        if resume and self.checkpoint.is_file():
            saved = load_checkpoint(self.checkpoint, self.device)
            self.model.load_state_dict(saved["model"])
            start, log = saved["epoch"], saved["log"]
            logger.info("fold %d: resuming after epoch %d", self.fold, start)
            # Each epoch draws from a fresh generator state, so a resumed run sees new crops, not epoch 1's again.
            seed += start
        train, val = split_samples(self.cfg, self.fold)
        logger.info("fold %d: %d training images/crops, %d held out, device %s", self.fold, len(train), len(val),
                    self.device)
        train_loader, val_loader = make_loaders(self.cfg, train, val, seed)
        optimizer = scheduler = None
        current_stage = None
        for epoch in range(start, self.total_epochs):
            stage = stage_of(epoch, self.tcfg["stages"])[0]
            if stage != current_stage:
                optimizer, scheduler = self._start_stage(stage)
                if saved is not None and saved.get("stage") == stage and saved.get("optimizer"):
                    optimizer.load_state_dict(saved["optimizer"])
                    scheduler.load_state_dict(saved["scheduler"])
                current_stage = stage
            row = self._epoch(epoch, train_loader, val_loader, optimizer)
            scheduler.step()
            log.append(row)
            self._save(epoch + 1, stage, optimizer, scheduler, log)
            logger.info("fold %d epoch %d/%d: %s", self.fold, epoch + 1, self.total_epochs,
                        ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
        return self.checkpoint

    def _start_stage(self, stage: int):
        spec = self.tcfg["stages"][stage]
        encoder_frozen(self.model, bool(spec["freeze_encoder"]))
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=spec["lr"])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.tcfg["lr_step"], gamma=self.tcfg["lr_gamma"])
        return optimizer, scheduler  # a stage resumed midway gets its decayed state from the checkpoint

    def _epoch(self, epoch: int, train_loader, val_loader, optimizer) -> dict:
        started = time.perf_counter()
        self.model.train()
        spec = self.tcfg["stages"][stage_of(epoch, self.tcfg["stages"])[0]]
        encoder_frozen(self.model, bool(spec["freeze_encoder"]))  # train() would wake frozen BatchNorm statistics
        total, batches = 0.0, 0
        for x, y in tqdm(train_loader, desc=f"fold {self.fold} epoch {epoch + 1}", unit="batch", leave=False):
            x = x.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.forward(x)
            loss = self.loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        row = {"epoch": epoch + 1, "train_loss": total / max(batches, 1), "lr": optimizer.param_groups[0]["lr"]}
        row.update(self._validate(val_loader))
        row["seconds"] = time.perf_counter() - started
        return row

    @torch.inference_mode()
    def _validate(self, loader) -> dict:
        self.model.eval()
        total, batches = 0.0, 0
        inter = union = 0
        for x, y in loader:
            x = x.to(self.device).to(memory_format=self.memory_format)
            y = y.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.forward(x)
            total += float(self.loss_fn(logits, y))
            batches += 1
            i, u = channel_iou(logits, y)
            inter, union = inter + i, union + u
        row = {"val_loss": total / max(batches, 1)}
        for index, name in enumerate(CHANNELS):
            row[f"iou_{name}"] = float(inter[index] / union[index]) if batches and union[index] > 0 else float("nan")
        return row

    def _save(self, epoch: int, stage: int, optimizer, scheduler, log: list[dict]) -> None:
        from .plots import plot_training_curves

        mean, std = input_stats(self.cfg)
        save_checkpoint(self.checkpoint, {
            "model": self.model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "stage": stage, "fold": self.fold, "log": log, "config": self.cfg,
            "input": {**self.cfg["input"], "mean": mean, "std": std}, "git_commit": git_commit(),
        })
        frame = pd.DataFrame(log)
        atomic_write_text(self.log_path, frame.to_csv(index=False))
        plot_training_curves(frame, self.out_dir / f"curves_fold{self.fold}.png", title=f"{self.cfg['experiment']} fold {self.fold}")


def train_folds(cfg: dict, out_dir: Path, folds: list[int] | None = None, resume: bool = False) -> list[Path]:
    """Train each requested fold; finished folds are skipped, interrupted ones resumed when `resume`."""
    folds = folds if folds is not None else (cfg["folds"]["run"] or list(range(cfg["folds"]["k"])))
    paths = []
    for fold in folds:
        trainer = FoldTrainer(cfg, fold, out_dir)
        if trainer.finished():
            logger.info("fold %d already trained: %s", fold, trainer.checkpoint)
        else:
            trainer.run(resume=resume)
        paths.append(trainer.checkpoint)
    return paths
