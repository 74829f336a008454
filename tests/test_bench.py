"""The benchmark command on a tiny model and a generated cache: every number it reports is positive and finite."""
import argparse
import json
import math

import numpy as np
import pytest
import torch
from conftest import write_synthetic_cache

from nuclei.bench import OneThread, format_table, run_bench, synthetic_probs
from nuclei.config import load_config


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bench_<what>.json goes to folds/<experiment>/ under the working directory
    write_synthetic_cache(tmp_path / "cache" / "stage1_train", n_images=6, size=(96, 96))
    # One torch thread: on a shared 2-core machine two threads wait on each other and the smp step takes 3x longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_config(None, ["experiment=tiny", "model.arch=plain_unet", "model.plain_base=8",
                              "model.activation=relu", "train.device=cpu", "train.workers=0",
                              f"data.cache={tmp_path / 'cache'}"])
    torch.set_num_threads(threads)


def _args(what):
    return argparse.Namespace(what=what, batch_size=2, size=64, steps=1)


def _values(table, section):
    return table.loc[table["section"] == section].set_index("metric")["value"]


def _assert_positive_finite(values):
    assert len(values) > 0
    for metric, value in values.items():
        assert value is not None and math.isfinite(value) and value > 0, (metric, value)


def test_train_section_reports_both_models_and_their_ratio(tiny_cfg, tmp_path, capsys):
    table = run_bench(tiny_cfg, _args("train"))
    values = _values(table, "train")
    _assert_positive_finite(values)
    config_rate = values["config model (plain_unet) images/s"]
    smp_rate = values["smp.Unet('xception') images/s"]
    assert values["ratio config model / smp"] == pytest.approx(config_rate / smp_rate)
    saved = json.loads((tmp_path / "folds" / "tiny" / "bench_train.json").read_text())
    assert saved["config"] == "tiny" and saved["what"] == "train" and saved["torch"] and saved["device"]
    assert [r["value"] for r in saved["rows"]] == pytest.approx(list(table["value"]))
    assert "ratio config model / smp" in capsys.readouterr().out


def test_postprocess_section_on_synthetic_probabilities(tiny_cfg, tmp_path):
    table = run_bench(tiny_cfg, _args("postprocess"))
    values = _values(table, "postprocess")
    _assert_positive_finite(values)
    assert values["input"] == 6  # fewer cached images than stage1_test's 65: all of them
    for method in ("watershed", "random_walker"):
        assert values[f"{method} p95"] >= values[f"{method} median"]
    note = table.loc[table["metric"] == "input", "note"].item()
    assert note.startswith("synthetic")
    saved = json.loads((tmp_path / "folds" / "tiny" / "bench_postprocess.json").read_text())
    assert {r["section"] for r in saved["rows"]} == {"postprocess"}


def test_sections_needing_the_cache_are_skipped_without_it(tiny_cfg, tmp_path):
    cfg = {**tiny_cfg, "data": {**tiny_cfg["data"], "cache": str(tmp_path / "absent")}}
    table = run_bench(cfg, _args("prepare"))
    assert list(table["metric"]) == ["skipped"] and table["value"].isna().all()
    assert "absent" in table["note"].item()
    assert "-" in format_table(table)


def test_synthetic_probs_are_blurred_targets():
    label = np.zeros((40, 40), np.int32)
    label[5:15, 5:15] = 1
    label[5:15, 15:25] = 2
    (probs,) = synthetic_probs([label], erosion_depth=2.0, touching_size=3)
    assert probs.shape == (3, 40, 40) and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert probs[0, 10, 10] > 0.9 and probs[0, 30, 30] < 0.01  # inside vs far outside the nuclei
    assert probs[2, 10, 15] > probs[2, 10, 8]  # the touching border is where the two squares meet


def test_one_thread_limits_and_restores_torch_threads():
    before = torch.get_num_threads()
    with OneThread() as threads:
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert threads.cpu_per_wall >= 0
