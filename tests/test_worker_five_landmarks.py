"""The worker with a five-landmark bundle: the outputs get the hinge points by name, and
the ostia (points, heights, long-axis key images) next to the annulus sizing.

The bundle is the shipped model with its output channels reordered and two extra ones
(copies of NCC and LCC) standing in for the ostia, so its hinge channels predict exactly
what the shipped model does, while the first three channels are not the hinges; its
"ostia" lie on the hinge plane (height 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from sqlalchemy import select

from dicomnode.db.models import Result
from dicomnode.process.worker import Worker
from glipcore import LANDMARKS, phantom
from glipcore.bundle import load_bundle, save_bundle
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "phantom-glip"
SEED = 880_051
ORDER = ("LCO", "RCC", "RCO", "LCC", "NCC")
SOURCE = {"LCO": "NCC", "RCC": "RCC", "RCO": "LCC", "LCC": "LCC", "NCC": "NCC"}


def _five_landmark_bundle(out: Path) -> Path:
    shipped = load_bundle(SHIPPED)
    m = shipped.manifest
    channels = [m.landmarks.index(SOURCE[n]) for n in ORDER]
    state = {k: v.clone() for k, v in shipped.models[0].state_dict().items()}
    for key in ("head.weight", "head.bias"):
        state[key] = state[key][channels].clone()
    cfg = m.model.model_copy(update={"out_channels": len(ORDER)})
    offsets = np.asarray(m.metadata["naive_offsets_mm"])[channels]
    return save_bundle(
        out,
        name="five-landmarks",
        landmarks=ORDER,
        model_cfg=cfg,
        preprocessing=m.preprocessing,
        sigma_mm=m.sigma_mm,
        fold_states=[state],
        trained_on="phantom",
        metadata={**m.metadata, "naive_offsets_mm": offsets.tolist()},
    )


def test_worker_gives_the_outputs_the_hinge_points_by_name(
    rig_factory: Any, tmp_path: Path
) -> None:
    vol, truth = phantom.generate(SEED, 0, "fast")
    files = write_ct_series(vol, tmp_path / "ct", SeriesMeta.synthetic(SEED, "five-0"))
    bundle = _five_landmark_bundle(tmp_path / "five")
    rig = rig_factory(model={"bundle": str(bundle)})
    rig.send(files)
    rig.sweep_after(5)
    w = Worker(rig.cfg, rig.engine, worker_id="five")
    assert w.load_model().startswith("five-landmarks-")
    outcome = w.process_one()
    assert outcome is not None and outcome.state == "done", outcome
    with rig.sessions() as s:
        res = s.scalars(select(Result)).one()
        lms = res.landmarks_lps or {}
        assert list(lms) == list(ORDER)
        hinges = np.array([lms[n] for n in LANDMARKS])
        assert np.all(euclidean_errors(hinges, truth.landmarks_lps) < 4.0)
        assert lms["LCO"] == lms["NCC"] and lms["RCO"] == lms["LCC"]  # copied channels
        outputs = res.outputs or {}
        assert all(outputs.get(kind) for kind in ("sr", "seg", "keyimage")), outputs
        m = res.measurements or {}
        assert m["lco_height_mm"] == pytest.approx(0.0, abs=1e-3)  # the NCC copy: on the plane
        assert m["rco_height_mm"] == pytest.approx(0.0, abs=1e-3)
        assert abs(m["annulus_area_mm2"] / truth.annulus_area_mm2 - 1.0) < 0.15, m
        assert "sizing" in (res.timings or {})
        assert [Path(p).name for p in outputs["png"]][-2:] == ["ostium-LCO.png", "ostium-RCO.png"]
        assert len(outputs["keyimage"]) == 5
    sr = hd.sr.srread(outputs["sr"][0]["path"])
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = {g.tracking_identifier: g for g in report.get_planar_roi_measurement_groups()}
    assert {"Aortic annulus", "Left coronary ostium", "Right coronary ostium"} <= set(groups)
    lco = groups["Left coronary ostium"].roi
    assert lco is not None
    np.testing.assert_allclose(lco.value[0], lms["LCO"], atol=1e-3)
