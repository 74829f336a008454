"""Throughput benchmark (`python -m nuclei bench`): training, data loading, inference, post-processing, cache reads.

Benchmarks print numbers, they assert nothing. One run prints one table and writes it, with the machine, torch
version, date and config name, to `folds/<experiment>/bench_<what>.json`. The acceptance figures, measured on the GPU:
config model / smp Xception U-Net training throughput >= 0.8; loader at least as fast as the model;
watershed median < 30 ms per 256x256 image and the whole stage1_test post-processing + CSV < 10 s on one core.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from .atomic import atomic_write_text
from .data.cache import CachedDataset
from .dataset import load_samples
from .infer import load_probs, predict_probs
from .losses import SegmentationLoss
from .metric import score_images
from .models.build import build_model
from .oof import experiment_dir, resolve_params
from .postprocess import PostprocessParams, labels_from_probs
from .submission import write_submission
from .targets import make_targets
from .train import make_loaders, resolve_device

logger = logging.getLogger(__name__)

SECTIONS = ("train", "loader", "infer", "postprocess", "prepare")
POSTPROCESS_IMAGES = 65  # the size of stage1_test
INFER_SIZE = 1024


@dataclass
class BenchRow:
    section: str
    metric: str
    value: float | None  # None when the measurement was skipped
    unit: str
    note: str = ""


@dataclass
class TrainSpeed:
    images_per_s: float
    peak_memory_mb: float
    peak_memory_kind: str  # "cuda max allocated" or "process max RSS"


# ---------------------------------------------------------------- environment


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} CPUs)"


def load_average() -> str | None:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.is_file() else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    # ru_maxrss is in KiB on Linux, bytes on macOS; it is the process's peak so far, never reset.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process max RSS"


# ---------------------------------------------------------------- measurements


def train_speed(
    model: nn.Module,
    loss_fn: nn.Module,
    batch_size: int,
    size: int,
    steps: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile_model: bool = False,
    warmup: int = 2,
    seed: int = 0,
) -> TrainSpeed:
    """Images/s of forward + loss + backward + Adam step on synthetic batches, as FoldTrainer runs them."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"need steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    _peak_memory_reset(device)
    model = model.to(device).to(memory_format=memory_format).train()
    loss_fn = loss_fn.to(device)
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch_size, 3, size, size, generator=generator).to(device).to(memory_format=memory_format)
    y = (torch.rand(batch_size, 3, size, size, generator=generator) > 0.7).to(torch.uint8).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    seconds = time.perf_counter() - started
    memory, kind = _peak_memory(device)
    return TrainSpeed(batch_size * steps / seconds, memory, kind)


def loader_speed(loader: Sequence, warmup_epoch: bool) -> tuple[float, int]:
    """(images/s, images) of one pass over a DataLoader; `warmup_epoch` first runs one untimed pass to start workers."""
    if warmup_epoch:
        for _ in loader:
            pass
    images = 0
    started = time.perf_counter()
    for x, _ in loader:
        images += len(x)
    seconds = time.perf_counter() - started
    return images / seconds, images


def infer_speed(
    model: nn.Module,
    size: int,
    n_images: int,
    tta: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_batch: int = 8,
    warmup: int = 1,
    seed: int = 0,
) -> float:
    """Images/s of `predict_probs` with one model on random size x size normalised images."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((size, size, 3), dtype=np.float32)
    for _ in range(warmup):
        predict_probs([model], image, tta=tta, device=device, amp_dtype=amp_dtype, max_batch=max_batch)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(n_images):
        predict_probs([model], image, tta=tta, device=device, amp_dtype=amp_dtype, max_batch=max_batch)
    _synchronize(device)
    return n_images / (time.perf_counter() - started)


def per_image_ms(probs: Sequence[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Wall milliseconds of fn(p) for each probability array."""
    times = []
    for p in probs:
        started = time.perf_counter()
        fn(p)
        times.append((time.perf_counter() - started) * 1000.0)
    return np.asarray(times)


def synthetic_probs(labels: Sequence[np.ndarray], erosion_depth: float, touching_size: int,
                    sigma: float = 1.0) -> list[np.ndarray]:
    """Probability-like maps: the 3 target channels of each label image, blurred (no blur across channels)."""
    return [ndimage.gaussian_filter(make_targets(label, erosion_depth, touching_size).astype(np.float32),
                                    sigma=(0, sigma, sigma)) for label in labels]


class OneThread:
    """Limit torch and OpenCV to one thread inside the block (BLAS/OpenMP pools are fixed at import: see the note)."""

    def __enter__(self):
        self.saved = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        # CPU time / wall time close to 1 shows the block really ran on one core.
        self.cpu_per_wall = (time.process_time() - self.cpu) / max(time.perf_counter() - self.wall, 1e-9)
        torch.set_num_threads(self.saved[0])
        cv2.setNumThreads(self.saved[1])


# ---------------------------------------------------------------- sections (each takes the config)


def _amp(cfg: dict, device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if cfg["train"]["amp"] == "bf16" and device.type == "cuda" else None


def _train_cache(cfg: dict) -> Path:
    return Path(cfg["data"]["cache"]) / cfg["data"]["train_split"]


def _skip(section: str, reason: str) -> list[BenchRow]:
    logger.warning("%s: skipped (%s)", section, reason)
    return [BenchRow(section, "skipped", None, "", reason)]


def bench_train(cfg: dict, batch_size: int, size: int, steps: int) -> list[BenchRow]:
    """Training images/s of the config's model and of smp's plain Xception U-Net, and their ratio."""
    import segmentation_models_pytorch as smp

    tcfg = cfg["train"]
    device = resolve_device(tcfg["device"])
    amp = _amp(cfg, device)
    setting = (f"{size}x{size}, batch {batch_size}, {steps} steps after 2 warm-up, "
               f"{'bf16' if amp else 'fp32'}{', channels_last' if tcfg['channels_last'] else ''}"
               f"{', compiled' if tcfg['compile'] else ''}")
    candidates = {
        f"config model ({cfg['model']['arch']})": lambda: build_model(cfg["model"]),
        "smp.Unet('xception')": lambda: smp.Unet("xception", encoder_weights=None, classes=3),
    }
    rows, speeds = [], []
    for name, make in candidates.items():
        logger.info("train: %s, %s", name, setting)
        torch.manual_seed(tcfg["seed"])
        speed = train_speed(make(), SegmentationLoss(tcfg["loss"], tcfg["channel_weights"]), batch_size, size, steps,
                            device, amp, tcfg["channels_last"], tcfg["compile"])
        speeds.append(speed.images_per_s)
        rows.append(BenchRow("train", f"{name} images/s", speed.images_per_s, "img/s", setting))
        rows.append(BenchRow("train", f"{name} peak memory", speed.peak_memory_mb, "MiB", speed.peak_memory_kind))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows.append(BenchRow("train", "ratio config model / smp", speeds[0] / speeds[1], "x", "target >= 0.8 on the H100"))
    return rows


def bench_loader(cfg: dict, batch_size: int, steps: int, model_images_per_s: float | None = None,
                 model_size: int | None = None) -> list[BenchRow]:
    """Images/s of the real training DataLoader (full augmentation, the config's workers) over the train cache."""
    root = _train_cache(cfg)
    if not (root / "index.csv").is_file():
        return _skip("loader", f"no cache at {root}: run `python -m nuclei prepare` first")
    cache = CachedDataset(root)
    samples = load_samples(cache, cache.ids)
    run_cfg = {**cfg, "train": {**cfg["train"], "batch_size": batch_size, "crops_per_epoch": batch_size * steps}}
    train_loader, _ = make_loaders(run_cfg, samples, [], seed=cfg["train"]["seed"])
    workers = cfg["train"]["workers"]
    crop = cfg["augment"]["crop_size"]
    logger.info("loader: %d crops of %d px, batch %d, %d workers", batch_size * steps, crop, batch_size, workers)
    rate, images = loader_speed(train_loader, warmup_epoch=workers > 0)
    note = (f"{images} crops {crop}x{crop} from {len(samples)} images, batch {batch_size}, {workers} workers"
            + (", after one warm-up epoch" if workers > 0 else ""))
    rows = [BenchRow("loader", "train loader images/s", rate, "img/s", note)]
    if model_images_per_s:
        size_note = "" if model_size == crop else f"; model at {model_size}x{model_size}, crops {crop}x{crop}"
        rows.append(BenchRow("loader", "ratio loader / config model training", rate / model_images_per_s, "x",
                             "target >= 1" + size_note))
    return rows


def bench_infer(cfg: dict, size: int = INFER_SIZE) -> list[BenchRow]:
    """Images/s of 8x TTA inference with one fold model at size x size."""
    device = resolve_device(cfg["train"]["device"])
    amp = _amp(cfg, device)
    n_images, warmup = (5, 1) if device.type == "cuda" else (1, 0)  # a 1024 px 8x TTA image takes many s on CPU
    torch.manual_seed(cfg["train"]["seed"])
    model = build_model(cfg["model"])
    logger.info("infer: %d image(s) of %dx%d, 8x TTA", n_images, size, size)
    rate = infer_speed(model, size, n_images, 8, device, amp, cfg["infer"]["batch_size"], warmup)
    note = f"{size}x{size}, tta 8, {'bf16' if amp else 'fp32'}, {n_images} image(s) after {warmup} warm-up"
    return [BenchRow("infer", "images/s per fold model", rate, "img/s", note),
            BenchRow("infer", "seconds per image per fold model", 1.0 / rate, "s")]


def postprocess_inputs(cfg: dict, n_images: int = POSTPROCESS_IMAGES) -> tuple[list[str], list[np.ndarray], str] | None:
    """(ids, probabilities, where they came from): the experiment's test probabilities, else blurred cached targets."""
    probs_dir = experiment_dir(cfg) / "test_probs"
    files = sorted(probs_dir.glob("*.npy")) if probs_dir.is_dir() else []
    if files:
        return [f.stem for f in files], [load_probs(f) for f in files], f"test probabilities in {probs_dir}"
    root = _train_cache(cfg)
    if not (root / "index.csv").is_file():
        return None
    cache = CachedDataset(root)
    ids = cache.ids[:n_images]
    probs = synthetic_probs([cache.label(i) for i in ids], cfg["targets"]["erosion_depth"],
                            cfg["targets"]["touching_size"])
    return ids, probs, f"synthetic: blurred targets of the first {len(ids)} labels in {root}"


def bench_postprocess(cfg: dict) -> list[BenchRow]:
    """Watershed and random walker ms per image, and probabilities -> labels -> validated CSV, on one thread."""
    inputs = postprocess_inputs(cfg)
    if inputs is None:
        return _skip("postprocess", f"no {experiment_dir(cfg) / 'test_probs'} and no cache at {_train_cache(cfg)}")
    ids, probs, source = inputs
    params: PostprocessParams = resolve_params(cfg, experiment_dir(cfg))[0]
    small = [i for i, p in enumerate(probs) if p.shape[1:] == (256, 256)]
    rows = []
    logger.info("postprocess: %d images (%s)", len(ids), source)
    with OneThread() as threads:
        for method in ("watershed", "random_walker"):
            method_params = params.replace(method=method)
            ms = per_image_ms(probs, lambda p: labels_from_probs(p, method_params))
            rows.append(BenchRow("postprocess", f"{method} median", float(np.median(ms)), "ms/img",
                                 f"{len(ms)} images" + (", target < 30 at 256x256" if method == "watershed" else "")))
            rows.append(BenchRow("postprocess", f"{method} p95", float(np.percentile(ms, 95)), "ms/img"))
            if small:
                rows.append(BenchRow("postprocess", f"{method} median at 256x256", float(np.median(ms[small])),
                                     "ms/img", f"{len(small)} images"))
        started = time.perf_counter()
        labels = {image_id: labels_from_probs(p, params) for image_id, p in zip(ids, probs)}
        with tempfile.TemporaryDirectory() as tmp:
            write_submission(Path(tmp) / "bench.csv", labels, ids)
        total = time.perf_counter() - started
    rows.append(BenchRow("postprocess", "probabilities -> labels -> validated CSV", total, "s",
                         f"{len(ids)} images, {params.method}; target < 10 s for stage1_test on one core"))
    note = ("torch and OpenCV on 1 thread (BLAS pools cannot be resized in-process); "
            "> 1: more than one core was used, < 1: waited for a core")
    rows.append(BenchRow("postprocess", "CPU time / wall time", threads.cpu_per_wall, "x", note))
    return [BenchRow("postprocess", "input", float(len(ids)), "images", source), *rows]


def bench_prepare(cfg: dict) -> list[BenchRow]:
    """Seconds to decode every cached train image and label once, and to score them against labels shifted 1 px."""
    root = _train_cache(cfg)
    if not (root / "index.csv").is_file():
        return _skip("prepare", f"no cache at {root}: run `python -m nuclei prepare` first")
    cache = CachedDataset(root)
    started = time.perf_counter()
    samples = load_samples(cache, cache.ids)
    load_s = time.perf_counter() - started
    truths = {s.image_id: s.label for s in samples}
    shifted = {i: np.roll(label, 1, axis=1) for i, label in truths.items()}
    started = time.perf_counter()
    scores = score_images(truths, shifted)
    score_s = time.perf_counter() - started
    n = len(samples)
    return [BenchRow("prepare", "load one epoch from the cache", load_s, "s", f"{n} images + labels ({root})"),
            BenchRow("prepare", "cache decode rate", n / load_s, "img/s"),
            BenchRow("prepare", f"score_images, {n} images", score_s, "s",
                     f"labels vs the same shifted 1 px (mAP {scores['score'].mean():.3f})"),
            BenchRow("prepare", "score_images per image", score_s * 1000.0 / n, "ms/img")]


# ---------------------------------------------------------------- the command


def _format(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def format_table(table: pd.DataFrame) -> str:
    """Plain text table: text columns left-aligned, values right-aligned."""
    cells = [[str(r.section), str(r.metric), _format(r.value), str(r.unit), str(r.note)] for r in table.itertuples()]
    header = list(table.columns)
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = (cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join(line(row) for row in [header, *cells])


def run_bench(cfg: dict, args: argparse.Namespace) -> pd.DataFrame:
    """Run the sections named by args.what ("all" or one of SECTIONS); print one table and write bench_<what>.json."""
    what = SECTIONS if args.what == "all" else (args.what,)
    unknown = [w for w in what if w not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; valid: all, {', '.join(SECTIONS)}")
    device = resolve_device(cfg["train"]["device"])
    meta = {"config": cfg["experiment"], "device": device_name(device), "torch": torch.__version__,
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "what": args.what,
            "batch_size": args.batch_size, "size": args.size, "steps": args.steps, "load_average_start": load_average()}
    rows: list[BenchRow] = []
    model_rate = None
    for section in what:
        started = time.perf_counter()
        if section == "train":
            section_rows = bench_train(cfg, args.batch_size, args.size, args.steps)
            model_rate = section_rows[0].value
        elif section == "loader":
            section_rows = bench_loader(cfg, args.batch_size, args.steps, model_rate, args.size)
        elif section == "infer":
            section_rows = bench_infer(cfg)
        elif section == "postprocess":
            section_rows = bench_postprocess(cfg)
        else:
            section_rows = bench_prepare(cfg)
        logger.info("%s section took %.1f s", section, time.perf_counter() - started)
        rows += section_rows
    meta["load_average_end"] = load_average()
    for row in rows:  # JSON has no NaN or infinity
        if row.value is not None and not math.isfinite(row.value):
            row.value = None
    table = pd.DataFrame([asdict(r) for r in rows], columns=[f for f in BenchRow.__dataclass_fields__])
    out = experiment_dir(cfg) / f"bench_{args.what}.json"  # one file per section set, so runs don't overwrite each other
    atomic_write_text(out, json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    header = (f"bench {args.what}: config {meta['config']}, {meta['device']}, torch {meta['torch']}, {meta['date']}, "
              f"load average {meta['load_average_start']} -> {meta['load_average_end']}")
    print(header, format_table(table), f"written to {out}", sep="\n")
    return table
