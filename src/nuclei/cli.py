"""Command line: one subcommand per stage of run_all.sh, plus score, evaluate, figure, build-v9 and bench.

Every subcommand takes `--config configs/<experiment>.yaml` and `--set section.key=value` overrides.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .config import dump_config, load_config
from .errors import NucleiError

logger = logging.getLogger("nuclei")


def _data_root(cfg: dict) -> Path:
    return Path(cfg["data"]["root"])


def cmd_download(cfg, args) -> None:
    from .data.download import download

    download(_data_root(cfg), cfg["submit"]["competition"])


def cmd_prepare(cfg, args) -> None:
    from .data.prepare import prepare_split

    data = cfg["data"]
    started = time.perf_counter()
    prepare_split(_data_root(cfg), data["train_split"], data["cache"], limit=data["limit"], force=args.force)
    prepare_split(_data_root(cfg), data["test_split"], data["cache"], force=args.force)
    logger.info("prepare took %.1f s", time.perf_counter() - started)
    _print_types(cfg)


def _print_types(cfg) -> None:
    from .data.cache import CachedDataset

    for split in (cfg["data"]["train_split"], cfg["data"]["test_split"]):
        index = CachedDataset(Path(cfg["data"]["cache"]) / split).index
        print(f"{split}: {len(index)} images;", ", ".join(f"{k} {v}" for k, v in index["type"].value_counts().items()))


def cmd_folds(cfg, args) -> None:
    from .data.cache import CachedDataset
    from .folds import stratified_folds, write_folds

    cache = CachedDataset(args.cache or Path(cfg["data"]["cache"]) / cfg["data"]["train_split"])
    out = Path(args.out or cfg["folds"]["file"])
    if out.is_file() and not args.force:
        print(f"{out} exists (use --force to regenerate)")
        return
    folds = stratified_folds(cache.ids, cache.index["type"].tolist(), cfg["folds"]["k"], cfg["folds"]["seed"])
    write_folds(out, folds)
    print(f"wrote {out}:", folds.groupby(["fold", "type"]).size().unstack(fill_value=0).to_string(), sep="\n")


def cmd_figure(cfg, args) -> None:
    from .data.cache import CachedDataset
    from .plots import plot_targets
    from .targets import make_targets

    cache = CachedDataset(Path(cfg["data"]["cache"]) / cfg["data"]["train_split"])
    image_id = args.image_id or cache.ids[0]
    targets = make_targets(cache.label(image_id), cfg["targets"]["erosion_depth"], cfg["targets"]["touching_size"])
    out = plot_targets(cache.image(image_id), targets, args.out or f"docs/targets_{image_id[:12]}.png", image_id[:16])
    print(out)


def _exp_dir(cfg) -> Path:
    from .oof import experiment_dir

    path = experiment_dir(cfg)
    path.mkdir(parents=True, exist_ok=True)
    from .atomic import atomic_write_text

    atomic_write_text(path / "config.yaml", dump_config(cfg))
    return path


def cmd_train(cfg, args) -> None:
    from .train import train_folds

    folds = [args.fold] if args.fold is not None else None
    started = time.perf_counter()
    train_folds(cfg, _exp_dir(cfg), folds, resume=args.resume)
    logger.info("train took %.1f s", time.perf_counter() - started)


def _print_oof(result: dict) -> None:
    print(f"OOF mAP {result['oof_map']:.4f} over {result['n_images']} images")
    for kind, row in result["by_type"].items():
        print(f"  {kind:13s} {row['map']:.4f}  ({row['n_images']} images)")


def cmd_oof(cfg, args) -> None:
    from .oof import predict_oof, score_oof

    from .evaluate import external_oof

    exp_dir = _exp_dir(cfg)
    predict_oof(cfg, exp_dir)
    _print_oof(score_oof(cfg, exp_dir))
    external = external_oof(cfg, exp_dir)  # external sources trained on, each image by its own held-out fold
    if external is not None:
        print("OOF on whole external images (folds by source image):", external.to_string(index=False), sep="\n")


def cmd_tune(cfg, args) -> None:
    from .oof import score_oof, tune_on_oof

    exp_dir = _exp_dir(cfg)
    result = tune_on_oof(cfg, exp_dir)
    print(f"OOF mAP with config thresholds {result['oof_map_config']:.4f}, tuned {result['oof_map_tuned']:.4f}, "
          f"tuned per type {result['oof_map_tuned_by_type']:.4f}")
    _print_oof(score_oof(cfg, exp_dir))


def cmd_predict(cfg, args) -> None:
    from .predict import predict_folder, predict_test

    if args.input:
        for path in predict_folder(cfg, Path(args.input), Path(args.output or "predictions")):
            print(path)
        return
    print(predict_test(cfg))


def submission_path(cfg) -> Path:
    return Path("submissions") / f"{cfg['experiment']}.csv"


def cmd_postprocess(cfg, args) -> None:
    from .predict import make_submission

    sample = _data_root(cfg) / cfg["data"]["sample_submission"]
    out = make_submission(cfg, sample, Path(args.out) if args.out else submission_path(cfg), overlays=not args.no_overlays)
    print(out)


def _oof_map(cfg) -> float | None:
    path = Path("folds") / cfg["experiment"] / "oof.json"
    return json.loads(path.read_text())["oof_map"] if path.is_file() else None


def _board_row(cfg, csv: Path, message: str) -> dict:
    from .checkpoint import git_commit

    local = None
    if cfg["data"]["solution"]:
        from .metric import score_csv

        local = float(score_csv(csv, cfg["data"]["solution"])["score"].mean())
    post = "tuned" if (Path("folds") / cfg["experiment"] / "postprocess.json").is_file() else "config"
    return {"file": str(csv), "experiments": "+".join([cfg["experiment"], *cfg["ensemble"]["experiments"]]),
            "folds": len(cfg["folds"]["run"] or range(cfg["folds"]["k"])), "tta": cfg["infer"]["tta"],
            "postprocess": f"{cfg['postprocess']['method']} ({post}{', per type' if cfg['postprocess']['per_type'] else ''})",
            "oof_map": _oof_map(cfg), "local_score": local, "message": message or f"commit {git_commit()}"}


def cmd_submit(cfg, args) -> None:
    from .checkpoint import git_commit
    from .leaderboard import record, submit

    csv = Path(args.csv) if args.csv else submission_path(cfg)
    oof = _oof_map(cfg)
    message = args.message or cfg["submit"]["message"] or (
        f"{cfg['experiment']} oof={oof:.4f} commit={git_commit()}" if oof is not None
        else f"{cfg['experiment']} commit={git_commit()}")
    row = _board_row(cfg, csv, message)
    try:
        submit(csv, message, cfg["submit"]["competition"])
        row["submitted"] = True
    except NucleiError as err:
        row["submitted"] = False
        logger.error("%s", err)
        if not args.record_anyway:
            raise
    record(Path(args.board), row)


def cmd_leaderboard(cfg, args) -> None:
    from .leaderboard import fetch_scores, merge_scores, read_board, record, sorted_table
    from .plots import plot_leaderboard

    board_path = Path(args.board)
    if args.add:
        record(board_path, {**_board_row(cfg, Path(args.add), args.message or ""), "submitted": False})
    board = read_board(board_path)
    if args.fetch:
        board = merge_scores(board, fetch_scores(cfg["submit"]["competition"]))
        from .atomic import atomic_write_text

        atomic_write_text(board_path, board.to_csv(index=False))
    print(sorted_table(board))
    if len(board):
        print(plot_leaderboard(board, board_path.with_suffix(".png")))


def cmd_score(cfg, args) -> None:
    from .metric import score_csv, scores_by_type

    per_image = score_csv(args.submission, args.solution)
    types = {}
    cache_index = Path(cfg["data"]["cache"]) / cfg["data"]["test_split"] / "index.csv"
    if cache_index.is_file():
        import pandas as pd

        index = pd.read_csv(cache_index, dtype={"image_id": str})
        types = dict(zip(index["image_id"], index["type"]))
    types = {i: types.get(i, "unknown") for i in per_image["image_id"]}
    print(scores_by_type(per_image, types).to_string(index=False))
    print(f"mAP {per_image['score'].mean():.4f} over {len(per_image)} images")


def cmd_evaluate(cfg, args) -> None:
    from .evaluate import evaluate_sources

    specs = [json.loads(s) if s.startswith("{") else {"kind": s.split(":", 1)[0], "path": s.split(":", 1)[1]}
             for s in args.source]
    table = evaluate_sources(cfg, specs, out_dir=Path("folds") / cfg["experiment"])
    print(table.to_string(index=False))


def cmd_build_v9(cfg, args) -> None:
    from .data.v9 import build_v9
    from .folds import read_folds

    v9 = cfg["data"]["v9"]
    if not v9["sources"]:
        print("no external source configured (data.v9.sources): build-v9 skipped")
        return
    started = time.perf_counter()
    manifest = build_v9(v9["sources"], v9["dir"], v9["crop_size"], v9["stride"], v9["min_foreground"],
                        v9["target_diameter"], read_folds(cfg["folds"]["file"]), cfg["folds"]["k"])
    print(manifest.groupby("source").agg(crops=("crop_id", "size"), nuclei=("n_nuclei", "sum")).to_string())
    print(f"built {len(manifest)} crops in {time.perf_counter() - started:.1f} s -> {v9['dir']}")


def cmd_bench(cfg, args) -> None:
    from .bench import run_bench

    run_bench(cfg, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nuclei", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=None, help="experiment YAML (configs/*.yaml)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    common.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.set_defaults(func=func)
        return p

    add("download", cmd_download, "download the competition data with the Kaggle CLI")
    add("prepare", cmd_prepare, "write the compact cache").add_argument("--force", action="store_true")
    p = add("folds", cmd_folds, "write a K-fold split stratified by image type")
    p.add_argument("--cache", help="cached dataset folder (default: the train split's cache)")
    p.add_argument("--out", help="CSV to write (default: folds.file)")
    p.add_argument("--force", action="store_true")
    p = add("figure", cmd_figure, "save an image with its three target channels as PNG")
    p.add_argument("--image-id")
    p.add_argument("--out")
    p = add("train", cmd_train, "train folds")
    p.add_argument("--fold", type=int)
    p.add_argument("--resume", action="store_true", help="continue an interrupted fold from its last epoch")
    add("oof", cmd_oof, "predict held-out images per fold and report the OOF mAP")
    add("tune", cmd_tune, "tune post-processing thresholds on OOF probabilities")
    p = add("predict", cmd_predict, "fold-averaged test probabilities, or labels for any folder of images")
    p.add_argument("--input", help="a folder of PNG/TIF/JPG images (not the Kaggle layout)")
    p.add_argument("--output", help="where --input predictions go")
    p = add("postprocess", cmd_postprocess, "probabilities -> labels, overlays and the Kaggle CSV")
    p.add_argument("--out")
    p.add_argument("--no-overlays", action="store_true")
    p = add("submit", cmd_submit, "kaggle competitions submit, then record it in the leaderboard")
    p.add_argument("--csv")
    p.add_argument("--message")
    p.add_argument("--board", default="submissions/leaderboard.csv")
    p.add_argument("--record-anyway", action="store_true", help="record the row even when the upload fails")
    p = add("leaderboard", cmd_leaderboard, "show (and update) submissions/leaderboard.csv")
    p.add_argument("--board", default="submissions/leaderboard.csv")
    p.add_argument("--add", help="record this CSV without submitting it")
    p.add_argument("--message")
    p.add_argument("--fetch", action="store_true", help="fetch public/private scores from Kaggle")
    p = add("score", cmd_score, "score a submission CSV against a solution CSV")
    p.add_argument("submission")
    p.add_argument("solution")
    p = add("evaluate", cmd_evaluate, "score a trained experiment on labelled external sets")
    p.add_argument("--source", action="append", required=True,
                   help='kind:path (monuseg, ctc, folder, kaggle) or a JSON source spec')
    add("build-v9", cmd_build_v9, "crop external sources into the V9 dataset")
    p = add("bench", cmd_bench, "throughput benchmark: models, loader, post-processing")
    p.add_argument("--what", default="all", choices=["all", "train", "loader", "infer", "postprocess", "prepare"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.config, args.set)
        args.func(cfg, args)
    except (NucleiError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    return 0
