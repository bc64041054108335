"""Series completeness and selection: rules, phases, one result set per study, late
instances. Sweeps run by hand with explicit clocks (no scheduler) so they are exact."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ingest_fixtures import retag, tiny_volume, write_series
from sqlalchemy import update

from dicomnode.config import NodeConfig
from dicomnode.db.models import Series, utcnow
from dicomnode.receive.phases import InstanceInfo, Phase, split_phases
from dicomnode.receive.selection import evaluate_series
from glipcore.dicomwrite import SeriesMeta

CT = "1.2.840.10008.5.1.4.1.1.2"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _inst(i: int, z: float, **kw: Any) -> InstanceInfo:
    base: dict[str, Any] = {
        "sop_class_uid": CT,
        "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
        "orientation": AXIAL,
        "slice_positions": [z],
        "slice_thickness": 1.0,
    }
    base.update(kw)
    return InstanceInfo(id=i, **base)


def _stack(n: int, dz: float = 1.0, start: int = 0, **kw: Any) -> list[InstanceInfo]:
    return [_inst(start + k, k * dz, **kw) for k in range(n)]


def _series(**kw: Any) -> Series:
    base = {"series_instance_uid": "1.2.3.4", "modality": "CT", "series_number": 3}
    base.update(kw)
    return Series(**base)


CFG = NodeConfig(selection={"min_slices": 10, "min_z_coverage_mm": 15.0})


# --- rules (pure functions) -------------------------------------------------------------


def test_a_good_series_is_selected_with_its_numbers() -> None:
    ev = evaluate_series(_series(), _stack(40, 0.5, slice_thickness=0.5), CFG)
    assert ev.eligible
    # 40 positions 0.5 mm apart: coverage 39 * 0.5 = 19.5 mm
    assert ev.reason == "selected: 40 slices, 0.5 mm, z-coverage 19.5 mm"


SR = "1.2.840.10008.5.1.4.1.1.88.22"
TOO_THICK = "slice thickness/spacing {} mm (at most 1.5 mm allowed)"
OWN = "this node's own output ({})"


@pytest.mark.parametrize(
    ("series_kw", "inst_kw", "n", "dz", "reason"),
    [
        ({"modality": "MR"}, {}, 30, 1.0, "modality MR (expected CT)"),
        (
            {},
            {"image_type": "DERIVED\\SECONDARY"},
            30,
            1.0,
            "image type DERIVED (ORIGINAL required)",
        ),
        ({}, {"image_type": "ORIGINAL\\PRIMARY\\LOCALIZER"}, 30, 1.0, "localizer"),
        ({}, {}, 5, 1.0, "5 slices (at least 10 required)"),
        ({}, {"slice_thickness": 3.0}, 30, 1.0, TOO_THICK.format(3)),
        ({}, {"slice_thickness": 0.5}, 30, 2.0, TOO_THICK.format(2)),
        ({}, {}, 12, 1.0, "z-coverage 11.0 mm (at least 15 mm required)"),
        ({}, {"sop_class_uid": SR}, 30, 1.0, "Enhanced SR Storage is archived only"),
        ({"manufacturer": "glip-node"}, {}, 30, 1.0, OWN.format("Manufacturer glip-node")),
        (
            {"series_description": "GLIP landmarks v1"},
            {},
            30,
            1.0,
            OWN.format("SeriesDescription starting with GLIP"),
        ),
    ],
)
def test_rules_record_why_not(
    series_kw: dict[str, Any], inst_kw: dict[str, Any], n: int, dz: float, reason: str
) -> None:
    ev = evaluate_series(_series(**series_kw), _stack(n, dz, **inst_kw), CFG)
    assert not ev.eligible
    assert ev.reason == f"not selected: {reason}"


def test_own_output_by_uid_root() -> None:
    uid = CFG.identity.uid_root + "1.2"
    ev = evaluate_series(_series(series_instance_uid=uid), _stack(30), CFG)
    assert ev.reason == f"not selected: this node's own output (UID root {CFG.identity.uid_root})"


def _two_phases(**kw_a: Any) -> list[InstanceInfo]:
    a = _stack(30, temporal_position_index=1, cardiac_phase_percent=40.0, **kw_a)
    b = _stack(20, start=100, temporal_position_index=2, cardiac_phase_percent=75.0)
    return a + b


def test_phases_split_by_the_first_attribute_that_separates_them() -> None:
    phases = split_phases(_two_phases())
    assert isinstance(phases, list)
    assert [(p.key, p.value, p.slices) for p in phases] == [
        ("cardiac_phase_percent", "40", 30),
        ("cardiac_phase_percent", "75", 20),
    ]
    # without the percent, TemporalPositionIndex separates them
    insts = [InstanceInfo(**{**i.__dict__, "cardiac_phase_percent": None}) for i in _two_phases()]
    phases = split_phases(insts)
    assert isinstance(phases, list)
    assert [(p.key, p.value) for p in phases] == [
        ("temporal_position_index", "1"),
        ("temporal_position_index", "2"),
    ]


def test_trigger_time_gives_a_percent_of_the_rr_interval() -> None:
    a = _stack(20, trigger_time=300.0, nominal_interval=1000.0)
    b = _stack(20, start=50, trigger_time=750.0, nominal_interval=1000.0)
    phases = split_phases(a + b)
    assert isinstance(phases, list)
    assert [p.percent for p in phases] == [30.0, 75.0]  # 300/1000, 750/1000


def test_duplicates_without_a_phase_attribute_are_refused() -> None:
    ev = evaluate_series(_series(), _stack(20) + _stack(20, start=50), CFG)
    assert not ev.eligible
    assert "several instances at the same position" in ev.reason


def test_configured_phase_percent_and_most_complete() -> None:
    most = evaluate_series(_series(), _two_phases(), CFG)
    assert most.phase is not None and most.phase.value == "40"  # 30 slices beat 20
    assert "chose NominalPercentageOfCardiacPhase=40 (40% R-R): the most complete" in most.reason
    cfg75 = NodeConfig(selection={"min_slices": 10, "min_z_coverage_mm": 15.0, "phase": 75})
    at75 = evaluate_series(_series(), _two_phases(), cfg75)
    assert at75.phase is not None and at75.phase.value == "75"
    assert "closest to the configured 75%" in at75.reason
    # a phase that breaks the rules is not chosen even when it is closest
    cfg40 = NodeConfig(selection={"min_slices": 25, "min_z_coverage_mm": 15.0, "phase": 75})
    ev = evaluate_series(_series(), _two_phases(), cfg40)
    assert ev.phase is not None and ev.phase.value == "40"


def test_phase_geometry_properties() -> None:
    p = Phase(None, None, None, (1, 2, 3), (0.0, 0.5, 1.25), 0.6)
    assert p.slices == 3
    assert p.coverage_mm == 1.25
    assert p.spacing_mm == pytest.approx(0.625)  # median of 0.5 and 0.75
    assert p.resolution_mm == pytest.approx(0.625)  # coarser of 0.6 thickness and spacing


# --- sweeps against the database (both backends) -----------------------------------------


def _uid(seed: int, case: str, **kw: Any) -> str:
    return SeriesMeta.synthetic(seed, case, **kw).series_instance_uid


def test_completion_waits_for_the_quiet_time(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory()
    rig.send(write_series(tmp_path / "s", seed=1, case_id="q"))
    rig.sweep_after(0.5)  # quiet time is 1 s
    assert rig.series(_uid(1, "q")).state == "receiving" and rig.jobs() == []
    rig.sweep_after(1.1)
    s = rig.series(_uid(1, "q"))
    assert (s.state, s.completion, s.decision) == ("complete", "quiet", "selected")
    assert len(rig.jobs()) == 1
    rig.sweep_after(5.0)  # later sweeps change nothing
    assert len(rig.jobs()) == 1


def test_forced_deadline_completes_a_series_that_never_goes_quiet(
    rig_factory: Any, tmp_path: Path
) -> None:
    rig = rig_factory(assembler={"quiet_time_s": 100.0, "forced_deadline_s": 300.0})
    rig.send(write_series(tmp_path / "s", seed=2, case_id="f"))
    rig.sweep_after(50)
    assert rig.series(_uid(2, "f")).state == "receiving"
    rig.sweep_after(301)  # still "arriving" as far as quiet time goes, but past the deadline
    s = rig.series(_uid(2, "f"))
    assert (s.state, s.completion) == ("complete", "quiet")  # 301 s is also > 100 s quiet
    rig2 = rig_factory(assembler={"quiet_time_s": 400.0, "forced_deadline_s": 400.0})
    rig2.send(write_series(tmp_path / "t", seed=3, case_id="g"))
    with rig2.sessions() as s2, s2.begin():  # first arrival long ago, last one just now
        s2.execute(
            update(Series)
            .where(Series.series_instance_uid == _uid(3, "g"))
            .values(burst_started_at=utcnow() - timedelta(seconds=500))
        )
    rig2.sweep_after(1)
    s = rig2.series(_uid(3, "g"))
    assert (s.state, s.completion) == ("complete", "forced")


def test_study_waits_until_all_its_series_are_quiet(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory()
    study = SeriesMeta.synthetic(4, "a").study_instance_uid
    rig.send(write_series(tmp_path / "a", seed=4, case_id="a"))
    with rig.sessions() as s, s.begin():  # series a arrived 10 s ago
        s.execute(
            update(Series).values(
                last_received_at=utcnow() - timedelta(seconds=10),
                burst_started_at=utcnow() - timedelta(seconds=10),
            )
        )
    thick = tiny_volume(5, spacing_ijk=(0.8, 0.8, 1.4))
    rig.send(write_series(tmp_path / "b", seed=5, case_id="b", vol=thick, study_instance_uid=study))
    rig.sweep_after(0.0)  # a is quiet, b is not: no decision yet
    assert rig.series(_uid(4, "a")).state == "complete"
    assert rig.series(_uid(4, "a")).decision is None and rig.jobs() == []
    rig.sweep_after(2.0)
    assert rig.series(_uid(4, "a")).decision == "selected"
    assert rig.series(_uid(5, "b", study_instance_uid=study)).decision == "superseded"
    assert len(rig.jobs()) == 1


def test_better_series_after_a_queued_job_takes_it_over(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory()
    study = SeriesMeta.synthetic(6, "thin").study_instance_uid
    thick = tiny_volume(7, spacing_ijk=(0.8, 0.8, 1.4))
    rig.send(write_series(tmp_path / "b", seed=7, case_id="b", vol=thick, study_instance_uid=study))
    rig.sweep_after(2)
    (first,) = rig.jobs()
    rig.send(write_series(tmp_path / "a", seed=6, case_id="thin"))
    rig.sweep_after(2)
    jobs = rig.jobs()
    assert [(j.id, j.state) for j in jobs] == [(first.id, "superseded"), (jobs[1].id, "queued")]
    thin_uid = _uid(6, "thin")
    assert jobs[0].reason == f"superseded by series {thin_uid}"
    assert rig.series(thin_uid).decision == "selected"
    worse = rig.series(_uid(7, "b", study_instance_uid=study))
    assert worse.decision == "superseded"
    assert (worse.decision_reason or "").startswith(f"superseded by series {thin_uid}")


def test_better_series_after_a_started_job_is_still_processed(
    rig_factory: Any, tmp_path: Path
) -> None:
    rig = rig_factory()
    study = SeriesMeta.synthetic(8, "thin").study_instance_uid
    thick = tiny_volume(9, spacing_ijk=(0.8, 0.8, 1.4))
    rig.send(write_series(tmp_path / "b", seed=9, case_id="b", vol=thick, study_instance_uid=study))
    rig.sweep_after(2)
    (first,) = rig.jobs()
    rig.claim(first.id)
    rig.send(write_series(tmp_path / "a", seed=8, case_id="thin"))
    rig.sweep_after(2)
    jobs = rig.jobs()
    assert [j.state for j in jobs] == ["running", "queued"]
    worse = rig.series(_uid(9, "b", study_instance_uid=study))
    assert worse.decision == "superseded"
    assert f"its job {first.id} had already started" in (worse.decision_reason or "")


def test_late_instances_while_queued_hold_then_requeue(rig_factory: Any, tmp_path: Path) -> None:
    rig = rig_factory()
    files = write_series(tmp_path / "s", seed=10, case_id="late")
    rig.send(files[:-4])
    rig.sweep_after(2)
    (job,) = rig.jobs()
    assert job.instance_count == len(files) - 4
    rig.send(files[-4:])
    rig.assembler.sweep(utcnow())  # arriving: the queued job is held
    assert rig.jobs()[0].state == "held"
    rig.sweep_after(2)
    (again,) = rig.jobs()
    assert (again.id, again.state, again.instance_count) == (job.id, "queued", len(files))
    assert rig.events()[-2:] == ["series_selected", "job_requeued"]


@pytest.mark.parametrize("policy", ["reprocess", "ignore"])
def test_late_instances_after_the_job_started(
    rig_factory: Any, tmp_path: Path, policy: str
) -> None:
    rig = rig_factory(selection={"late_instances": policy})
    files = write_series(tmp_path / "s", seed=11, case_id="late")
    rig.send(files[:-4])
    rig.sweep_after(2)
    (job,) = rig.jobs()
    rig.claim(job.id)
    rig.send(files[-4:])
    rig.sweep_after(2)
    jobs = rig.jobs()
    if policy == "reprocess":
        assert [j.state for j in jobs] == ["running", "queued"]
        assert jobs[1].instance_count == len(files)
        assert f"reprocess: instances arrived after job {job.id} started" in (jobs[1].reason or "")
    else:
        assert [j.state for j in jobs] == ["running"]
        assert rig.events()[-1] == "late_instances_ignored"
        s = rig.series(_uid(11, "late"))
        assert f"late instances ignored (job {job.id} had already started)" in (
            s.decision_reason or ""
        )


def test_multiphase_series_is_split_and_the_configured_phase_chosen(
    rig_factory: Any, tmp_path: Path
) -> None:
    rig = rig_factory(selection={"phase": 75})
    files = write_series(tmp_path / "p40", seed=12, case_id="mp")
    p40 = retag(files, tmp_path / "a", "40", NominalPercentageOfCardiacPhase=40.0)
    p75 = retag(files, tmp_path / "b", "75", NominalPercentageOfCardiacPhase=75.0)
    rig.send(p40 + p75)
    rig.sweep_after(2)
    (job,) = rig.jobs()
    assert (job.phase_key, job.phase_value, job.instance_count) == (
        "cardiac_phase_percent",
        "75",
        len(files),
    )
    assert "2 phases, chose NominalPercentageOfCardiacPhase=75 (75% R-R)" in (job.reason or "")


def test_series_that_stops_qualifying_cancels_its_waiting_job(
    rig_factory: Any, tmp_path: Path
) -> None:
    rig = rig_factory()
    files = write_series(tmp_path / "s", seed=13, case_id="dup")
    rig.send(files)
    rig.sweep_after(2)
    (job,) = rig.jobs()
    # late copies at the same positions, with no phase attribute to tell them apart
    rig.send(retag(files[:3], tmp_path / "again", "copy"))
    rig.sweep_after(2)
    (cancelled,) = rig.jobs()
    assert (cancelled.id, cancelled.state) == (job.id, "cancelled")
    assert "several instances at the same position" in (cancelled.reason or "")
    assert rig.series(_uid(13, "dup")).decision == "not_selected"


def test_a_series_received_before_the_start_gets_a_fresh_quiet_period(
    rig_factory: Any, tmp_path: Path
) -> None:
    rig = rig_factory(started_at=utcnow(), assembler={"quiet_time_s": 30.0})
    rig.send(write_series(tmp_path / "s", seed=9, case_id="down"))
    with rig.sessions() as s, s.begin():  # its last instance came an hour before the start
        hour_ago = utcnow() - timedelta(hours=1)
        s.execute(update(Series).values(last_received_at=hour_ago, burst_started_at=hour_ago))
    rig.assembler.sweep()  # just after the start
    assert rig.series(_uid(9, "down")).state == "receiving"
    rig.sweep_after(20)  # still inside the fresh quiet period
    assert rig.series(_uid(9, "down")).state == "receiving" and rig.jobs() == []
    rig.sweep_after(31)  # quiet for quiet_time_s since the start
    s = rig.series(_uid(9, "down"))
    assert (s.state, s.completion) == ("complete", "quiet")
    assert len(rig.jobs()) == 1
