"""``glip phantom``: write phantom CT cases, their manifest and their ground truth."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


class Preset(StrEnum):
    full = "full"
    fast = "fast"
    model = "model"


class Format(StrEnum):
    dicom = "dicom"
    enhanced = "enhanced"
    legacy_enhanced = "legacy-enhanced"
    nifti = "nifti"


class Calcium(StrEnum):
    default = "default"
    none = "none"
    mild = "mild"
    heavy = "heavy"


ENHANCED_FILES = {"enhanced": "EnhancedCT.dcm", "legacy-enhanced": "LegacyEnhancedCT.dcm"}
"""The one file an enhanced case's folder holds."""


class Syntax(StrEnum):
    explicit = "explicit"
    implicit = "implicit"
    deflate = "deflate"
    rle = "rle"
    jpegls = "jpegls"
    j2k = "j2k"


def _transfer_syntax_uid(name: str) -> str:
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        RLELossless,
    )

    return str(
        {
            "explicit": ExplicitVRLittleEndian,
            "implicit": ImplicitVRLittleEndian,
            "deflate": DeflatedExplicitVRLittleEndian,
            "rle": RLELossless,
            "jpegls": JPEGLSLossless,
            "j2k": JPEG2000Lossless,
        }[name]
    )


@dataclass(frozen=True)
class Job:
    """One case to make (picklable for the process pool)."""

    seed: int
    index: int
    preset: str
    fmt: str
    syntax: str
    out: Path
    preview: bool
    render_workers: int
    calcium: str = "default"
    hinge_calcium: bool = False


def _calcium_label(job: Job) -> str:
    """The calcium options as a label: empty for the defaults, else e.g. " calcium heavy+hinge"."""
    if job.calcium == "default" and not job.hinge_calcium:
        return ""
    return f" calcium {job.calcium}{'+hinge' if job.hinge_calcium else ''}"


def _write_dicom(job: Job, vol: Any, cid: str) -> Path:
    """The case as a DICOM folder: a single-frame series or one (legacy) enhanced file."""
    from glipcore import phantom
    from glipcore.dicomwrite import (
        SeriesMeta,
        write_ct_series,
        write_enhanced_ct,
        write_legacy_enhanced_ct,
    )

    target = job.out / cid
    if target.exists():
        shutil.rmtree(target)
    meta = SeriesMeta.synthetic(
        np.random.default_rng([job.seed, job.index, 99]),
        cid,
        series_description=(
            f"CTA aortic root phantom ({phantom.GENERATOR_VERSION}){_calcium_label(job)}"
        )[:64],
    )
    ts = _transfer_syntax_uid(job.syntax)
    if job.fmt == "dicom":
        write_ct_series(vol, target, meta, transfer_syntax=ts)
    elif job.fmt == "enhanced":
        write_enhanced_ct(vol, target / ENHANCED_FILES[job.fmt], meta, transfer_syntax=ts)
    else:
        write_legacy_enhanced_ct(vol, target / ENHANCED_FILES[job.fmt], meta, transfer_syntax=ts)
    return target


def make_case(job: Job) -> dict[str, Any]:
    """Render, write and (optionally) preview one case; returns its truth.json entry."""
    from glipcore import phantom
    from glipcore.volume_io import save_nifti

    t0 = time.perf_counter()
    cid = phantom.case_id(job.seed, job.index)
    options: dict[str, Any] = {"calcium": job.calcium, "hinge_calcium": job.hinge_calcium}
    vol, truth = phantom.generate(
        job.seed, job.index, job.preset, workers=job.render_workers, **options
    )
    if job.fmt == "nifti":
        target = save_nifti(vol, job.out / f"{cid}.nii.gz")
    else:
        target = _write_dicom(job, vol, cid)
    if job.preview:
        from glipcore.preview import save_preview

        save_preview(
            vol,
            truth.landmarks_lps,
            job.out / "preview" / f"{cid}.png",
            title=(
                f"{cid}  quality {truth.quality}  tilt {truth.measurements['tilt_deg']:.0f} deg"
                f"  perimeter {truth.annulus_perimeter_mm:.0f} mm  ({job.preset})"
                f"{_calcium_label(job)}"
            ),
            extra_points={"LO": truth.ostia_lps[0], "RO": truth.ostia_lps[1]},
        )
    return {
        "case_id": cid,
        "index": job.index,
        "path": target.relative_to(job.out).as_posix(),
        "quality": truth.quality,
        **options,
        "truth": truth.to_dict(),
        "parameters": phantom.random_case(job.seed, job.index, **options).to_dict(),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _load_existing(out: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Entries of an earlier run into the same folder, if it used the same settings."""
    f = out / "truth.json"
    if not f.exists():
        return {}
    data = json.loads(f.read_text())
    for key, value in settings.items():
        if data.get(key) != value:
            raise _fail(
                f"{out} holds cases made with {key}={data.get(key)!r}, not {value!r}",
                "write to a new --out folder (or delete the old one)",
            )
    return {e["case_id"]: e for e in data.get("cases", [])}


def _write_outputs(out: Path, settings: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    from glipcore.manifest import ManifestRow, write_manifest

    entries = sorted(entries, key=lambda e: int(e["index"]))
    doc = {**settings, "cases": entries}
    tmp = out / "truth.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out / "truth.json")
    rows = [
        ManifestRow(
            e["case_id"],
            Path(e["path"]),
            np.asarray(e["truth"]["landmarks_lps"]),
            e["quality"],
            ostia=np.asarray(e["truth"]["ostia_lps"]),
        )
        for e in entries
    ]
    header = {k: str(v) for k, v in settings.items()}
    write_manifest(rows, out / "manifest.csv", header=header)


def _fail(message: str, hint: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}\n[dim]hint: {hint}[/]")
    return typer.Exit(code=2)


def phantom(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created).")],
    cases: Annotated[int, typer.Option("--cases", "-n", min=1, help="Number of cases.")] = 10,
    seed: Annotated[int, typer.Option("--seed", "-s", min=0, help="Cohort seed.")] = 0,
    preset: Annotated[
        Preset,
        typer.Option(
            help="Grid: full (512x512x320, ~0.4 mm), fast (128x128x80, 1.25 mm), model (1.6 mm)."
        ),
    ] = Preset.full,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            help="dicom (single-frame series), enhanced (one Enhanced CT file), "
            "legacy-enhanced (one Legacy Converted Enhanced CT file) or nifti.",
        ),
    ] = Format.dicom,
    transfer_syntax: Annotated[
        Syntax, typer.Option(help="DICOM transfer syntax (lossless only).")
    ] = Syntax.explicit,
    preview: Annotated[
        bool, typer.Option(help="Also write preview/<case_id>.png mosaics.")
    ] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes (cases, or z-slabs of one case).")
    ] = 2,
    start_index: Annotated[int, typer.Option(min=0, help="Index of the first case.")] = 0,
    calcium: Annotated[
        Calcium,
        typer.Option(
            help="Valve calcium: default (each case's own draw, as before), none, mild "
            "(a few small nodules) or heavy (bulky calcific stenosis)."
        ),
    ] = Calcium.default,
    hinge_calcium: Annotated[
        bool,
        typer.Option(help="Add annular calcium right at the hinge points (0-2 mm from them)."),
    ] = False,
) -> None:
    """Generate aortic-root CT phantoms with ground-truth hinge points.

    Writes OUT/<case_id>/ (a CT Image Storage series, or one
    EnhancedCT.dcm / LegacyEnhancedCT.dcm file) or OUT/<case_id>.nii.gz,
    plus OUT/manifest.csv (case_id, path, RCC/LCC/NCC x y z in LPS mm,
    quality, LCO/RCO coronary ostia) and OUT/truth.json (annulus, ostia,
    measurements, parameters, generator version, calcium options).

    Calcium options change only the calcium (drawn on random streams of
    their own): the anatomy, pose and noise stay those of the default case
    with the same seed and index.

    The same seed and index always give the same case; another run with
    --start-index adds cases to the same folder.

    Examples:

      # DICOM, paper-size scans (512 x 512 x 320)
      glip phantom --out data/phantoms --cases 20 --seed 1

      # small and quick, for tests
      glip phantom -o /tmp/ph -n 100 --preset fast --format nifti

      # straight onto the 1.6 mm model grid, for training
      glip phantom -o data/train -n 200 --preset model --format nifti

      # JPEG-LS compressed DICOM, with PNG previews to look at
      glip phantom -o /tmp/ph -n 3 --transfer-syntax jpegls --preview

      # heavily calcified valves with calcium at the hinges, as Enhanced CT
      glip phantom -o /tmp/ph -n 5 --calcium heavy --hinge-calcium --format enhanced
    """
    from glipcore import phantom as ph

    settings = {
        "generator_version": ph.GENERATOR_VERSION,
        "seed": seed,
        "preset": preset.value,
        "format": fmt.value,
        "calcium": calcium.value,
        "hinge_calcium": hinge_calcium,
    }
    if fmt is Format.nifti and transfer_syntax is not Syntax.explicit:
        raise _fail("--transfer-syntax applies to DICOM only", "drop it or use --format dicom")
    out.mkdir(parents=True, exist_ok=True)
    existing = _load_existing(out, settings)
    parallel_cases = cases >= 2 and workers >= 2
    jobs = [
        Job(
            seed,
            i,
            preset.value,
            fmt.value,
            transfer_syntax.value,
            out,
            preview,
            1 if parallel_cases else workers,
            calcium.value,
            hinge_calcium,
        )
        for i in range(start_index, start_index + cases)
    ]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    t0 = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"phantoms ({preset.value}, {fmt.value})", total=len(jobs))
        if parallel_cases:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                futures = [pool.submit(make_case, j) for j in jobs]
                for fut in as_completed(futures):
                    entry = fut.result()
                    existing[entry["case_id"]] = entry
                    progress.advance(task)
        else:
            for job in jobs:
                entry = make_case(job)
                existing[entry["case_id"]] = entry
                progress.advance(task)
    _write_outputs(out, settings, list(existing.values()))
    console.print(
        f"[bold green]wrote[/] {len(jobs)} case(s) to {out} in {time.perf_counter() - t0:.1f} s "
        f"(manifest.csv, truth.json{', preview/' if preview else ''})"
    )
