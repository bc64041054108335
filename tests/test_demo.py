"""The demo's flow on a small phantom with the built-in storage SCP as the PACS (the
full-size flow with Orthanc is tests/test_end_to_end.py), then `dicomnode status`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.config import NodeConfig
from dicomnode.operate import demo_cli
from dicomnode.operate.demo import run_demo
from dicomnode.operate.demo_cli import print_result


def test_demo_flow_and_status(tmp_path: Path) -> None:
    base = NodeConfig(var_dir=tmp_path / "var", archive={"min_free": "0"})
    steps: list[str] = []
    r = run_demo(
        base, workdir=tmp_path / "work", preset="fast", prefer_orthanc=False, progress=steps.append
    )
    assert r.pacs_kind == "built-in storage SCP"
    assert any("sending" in s for s in steps)
    assert r.errors_mm.shape == (3,) and np.all(r.errors_mm < 4.0), r.errors_mm
    assert r.result["status"] in ("ok", "flagged")
    assert len(r.delivered) == 7  # SR, SEG, five key images (three views, two ostia)
    assert r.sr_path and Path(r.sr_path).exists()
    assert len(r.pngs) == 5 and all(Path(p).exists() for p in r.pngs)
    # Annulus sizing and ostium heights next to the phantom truth.
    m = r.result["measurements"]
    truth_area = r.truth_measurements["annulus_area_mm2"]
    assert abs(m["annulus_area_mm2"] / truth_area - 1.0) < 0.15, m
    for name in ("lco", "rco"):
        assert abs(m[f"{name}_height_mm"] - r.truth_measurements[f"{name}_height_mm"]) < 2.0, m
    assert set(r.ostia_errors_mm) == {"LCO", "RCO"} and max(r.ostia_errors_mm.values()) < 3.0
    with demo_cli.out.capture() as captured:
        print_result(r)
    text = captured.get()
    assert f"{m['annulus_area_mm2']:.0f} mm²" in text and f"{truth_area:.0f} mm²" in text
    assert "LCO height (centre)" in text and "not predicted" not in text
    assert "LCO position error vs truth" in text
    # What the operator sees afterwards: the study delivered.
    cfg_file = tmp_path / "node.yaml"
    cfg_file.write_text(yaml.safe_dump({"var_dir": str(tmp_path / "var")}))
    out = CliRunner().invoke(app, ["--config", str(cfg_file), "status", "--json"])
    assert out.exit_code == 0, out.output
    snap = json.loads(out.stdout)
    assert [x["outcome"] for x in snap["recent_results"]] == ["delivered"]
    assert snap["deliveries"]["by_state"]["sent"] == 7
    # Run again on the same database: a new case, processed and delivered again.
    again = run_demo(base, workdir=tmp_path / "work2", preset="fast", prefer_orthanc=False)
    assert again.study_uid != r.study_uid and len(again.delivered) == 7
