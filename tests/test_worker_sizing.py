"""The worker's annulus sizing and its gate on real phantom series (fast preset): a refused
sizing never holds back the hinge points; a degenerate prediction is withheld; both show
in the result row and the CSV export."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import select

from dicomnode.db.models import Delivery, Event, Result
from dicomnode.operate.admin import export_results_csv
from dicomnode.process import worker as worker_module
from dicomnode.process.worker import Worker, annulus_sizing
from glipcore import LANDMARKS, phantom
from glipcore.bundle import load_bundle, save_bundle
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.geometry import plane_or_none
from glipcore.metrics import euclidean_errors
from glipcore.predict import LandmarkConfidence, Prediction
from glipcore.volume import Volume

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "phantom-glip"
SEED = 880_001
DEST = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1, "kinds": ["sr"]}]


def _without_contrast_at_the_annulus(vol: Volume, truth: Any) -> Volume:
    """The CT with the blood pool in a 4 mm slab around the true annulus plane (within
    20 mm of its centre) replaced by soft tissue: no lumen on the plane to size."""
    k, j, i = np.indices(vol.array.shape)
    lps = vol.to_lps(np.stack([i, j, k], -1).reshape(-1, 3).astype(float))
    rel = lps - truth.annulus_center
    along = rel @ truth.annulus_normal
    radial = np.linalg.norm(rel - along[:, None] * truth.annulus_normal, axis=1)
    near = ((np.abs(along) < 2.0) & (radial < 20.0)).reshape(vol.array.shape)
    array = vol.array.copy()
    array[near & (array > 150.0)] = 40.0
    return Volume(array=array, affine=vol.affine, meta=vol.meta)


def _csv_rows(engine: Any) -> list[dict[str, str]]:
    buf = io.StringIO()
    export_results_csv(engine, buf)
    buf.seek(0)
    return list(csv.DictReader(buf))


def test_refused_sizing_still_delivers_the_hinge_points(rig_factory: Any, tmp_path: Path) -> None:
    vol, truth = phantom.generate(SEED, 0, "fast")
    vol = _without_contrast_at_the_annulus(vol, truth)
    files = write_ct_series(vol, tmp_path / "ct", SeriesMeta.synthetic(SEED, "refused"))
    rig = rig_factory(destinations=DEST)
    rig.send(files)
    rig.sweep_after(5)
    outcome = Worker(rig.cfg, rig.engine).process_one()
    assert outcome is not None and outcome.state == "done", outcome
    with rig.sessions() as s:
        res = s.scalars(select(Result)).one()
        assert res.status in ("ok", "flagged")
        pts = np.array([res.landmarks_lps[n] for n in LANDMARKS])
        assert np.all(euclidean_errors(pts, truth.landmarks_lps) < 4.0)
        m = res.measurements or {}
        assert str(m["annulus_sizing_refusal"]).startswith("no_lumen: no contrast-filled"), m
        assert "annulus_area_mm2" not in m
        # The ostium heights need the hinge plane only, not the lumen: still reported.
        assert m["lco_height_mm"] > 0 and m["rco_height_mm"] > 0, m
        assert {"sizing", "sizing_cpu"} <= set(res.timings or {})
        assert [d.kind for d in s.scalars(select(Delivery))] == ["sr"]  # delivered
        sr_path = (res.outputs or {})["sr"][0]["path"]
    texts = [
        str(item.TextValue)
        for group in dcmread(sr_path).ContentSequence
        for item in group.get("ContentSequence", [])
        if item.ValueType == "TEXT"
    ]
    assert any(t.startswith("Annulus sizing refused: no_lumen") for t in texts), texts
    (row,) = _csv_rows(rig.engine)
    assert row["annulus_sizing_refusal"].startswith("no_lumen: ")
    assert row["annulus_area_mm2"] == "" and row["RCC_x"] != ""


def _coincident_bundle(out: Path) -> Path:
    """The shipped model with its LCC channel replaced by its RCC channel: LCC and RCC
    land on one spot, a degenerate prediction (the other channels stay)."""
    shipped = load_bundle(SHIPPED)
    m = shipped.manifest
    source = {"LCC": "RCC"}  # every other channel (NCC, the ostia) stays
    channels = [m.landmarks.index(source.get(n, n)) for n in m.landmarks]
    state = {k: v.clone() for k, v in shipped.models[0].state_dict().items()}
    for key in ("head.weight", "head.bias"):
        state[key] = state[key][channels].clone()
    offsets = np.asarray(m.metadata["naive_offsets_mm"])[channels]
    return save_bundle(
        out,
        name="coincident",
        landmarks=m.landmarks,
        model_cfg=m.model,
        preprocessing=m.preprocessing,
        sigma_mm=m.sigma_mm,
        fold_states=[state],
        trained_on="phantom",
        metadata={**m.metadata, "naive_offsets_mm": offsets.tolist()},
    )


def test_degenerate_prediction_is_withheld_without_objects(
    rig_factory: Any, tmp_path: Path
) -> None:
    vol, _truth = phantom.generate(SEED, 0, "fast")
    files = write_ct_series(vol, tmp_path / "ct", SeriesMeta.synthetic(SEED, "degenerate"))
    rig = rig_factory(destinations=DEST, model={"bundle": str(_coincident_bundle(tmp_path / "b"))})
    rig.send(files)
    rig.sweep_after(5)
    outcome = Worker(rig.cfg, rig.engine).process_one()
    assert outcome is not None and outcome.state == "done", outcome
    with rig.sessions() as s:
        res = s.scalars(select(Result)).one()
        assert res.status == "withheld" and res.plane is None
        flags = res.flags or []
        assert flags and flags[0].startswith("degenerate prediction: RCC and LCC lie on one spot")
        assert res.landmarks_lps["RCC"] == res.landmarks_lps["LCC"]
        assert not (res.outputs or {}).get("sr") and res.measurements == {}
        assert s.scalars(select(Delivery)).first() is None
        assert "result_withheld" in s.scalars(select(Event.kind)).all()
    (row,) = _csv_rows(rig.engine)
    assert row["status"] == "withheld" and row["plane_normal_x"] == ""
    assert row["flags"].startswith("degenerate prediction")


def _prediction(hinges: np.ndarray) -> Prediction:
    conf = LandmarkConfidence(fold_spread_mm=0.0, sharpness=500.0, coherence=1.0, score=0.9)
    return Prediction(
        names=LANDMARKS,
        landmarks_lps=hinges,
        landmarks_argmax_lps=hinges,
        fold_landmarks_lps=hinges[None],
        hinge_plane=plane_or_none(hinges),
        confidence=(conf,) * 3,
        model_version="test-000000000000",
    )


def test_sizing_failure_becomes_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    vol, truth = phantom.generate(SEED, 0, "fast")
    pred = _prediction(np.asarray(truth.landmarks_lps, dtype=float))
    sized = annulus_sizing(vol, pred)
    assert not isinstance(sized, str), sized
    blank = Volume(array=np.full_like(vol.array, -1000.0), affine=vol.affine)
    assert str(annulus_sizing(blank, pred)).startswith("no_lumen: ")

    def broken(*_a: Any, **_k: Any) -> Any:  # a sizing bug cannot be produced for real
        raise FloatingPointError("simulated")

    monkeypatch.setattr(worker_module, "size_annulus", broken)
    assert annulus_sizing(vol, pred) == "error: FloatingPointError: simulated"
