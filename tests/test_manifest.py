"""The case manifest: round trip, relative paths, and errors that name line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glipcore.manifest import (
    COLUMNS,
    ManifestError,
    ManifestRow,
    read_manifest,
    read_manifest_header,
    write_manifest,
)

HEADER = "case_id,path,RCC_x,RCC_y,RCC_z,LCC_x,LCC_y,LCC_z,NCC_x,NCC_y,NCC_z,quality\n"


def _row(i: int, path: Path) -> ManifestRow:
    lm = np.arange(9, dtype=np.float64).reshape(3, 3) * 1.1 + i + 0.123456789012345
    return ManifestRow(f"case-{i}", path, lm, ("1", "2", "3-", "3+", "4")[i % 5])


def test_columns_are_exactly_the_design_layout() -> None:
    assert HEADER.strip().split(",") == list(COLUMNS)


def test_round_trip_with_paths_relative_to_the_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "series-0").mkdir(parents=True)
    (data / "case-1.nii.gz").write_bytes(b"")
    rows = [_row(0, data / "series-0"), _row(1, data / "case-1.nii.gz")]
    out = write_manifest(rows, data / "manifest.csv", header={"generator": "x/1.0"})
    text = out.read_text()
    assert text.splitlines()[0] == "# generator: x/1.0"
    assert text.splitlines()[1] == HEADER.strip()
    assert ",series-0," in text and ",case-1.nii.gz," in text  # relative, not absolute
    back = read_manifest(out)
    assert [r.case_id for r in back] == ["case-0", "case-1"]
    for a, b in zip(rows, back, strict=True):
        assert np.array_equal(a.landmarks, b.landmarks)  # exact float round trip
        assert a.quality == b.quality
        assert b.path == a.path.resolve()
    assert read_manifest_header(out) == {"generator": "x/1.0"}


def test_reading_resolves_relative_to_the_manifest_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub" / "s1").mkdir(parents=True)
    m = tmp_path / "sub" / "manifest.csv"
    m.write_text(HEADER + "a,s1,1,2,3,4,5,6,7,8,9,3+\n")
    monkeypatch.chdir(tmp_path)
    (row,) = read_manifest(Path("sub/manifest.csv"))
    assert row.path == (tmp_path / "sub" / "s1").resolve()
    assert row.landmarks.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a,s1,1,2,,4,5,6,7,8,9,3+", r"manifest.csv:2, column 'RCC_z': missing value"),
        ("a,s1,1,2,3,4,x5,6,7,8,9,3+", r"manifest.csv:2, column 'LCC_y': not a number: 'x5'"),
        ("a,s1,1,2,3,4,5,6,7,8,nan,3+", r"manifest.csv:2, column 'NCC_z': not a finite"),
        ("a,s1,1,2,3,4,5,6,7,8,9,5", r"manifest.csv:2, column 'quality'"),
        (",s1,1,2,3,4,5,6,7,8,9,3+", r"manifest.csv:2, column 'case_id': missing value"),
        ("a,,1,2,3,4,5,6,7,8,9,3+", r"manifest.csv:2, column 'path': missing value"),
        ("a,nowhere,1,2,3,4,5,6,7,8,9,3+", r"manifest.csv:2, column 'path': .*does not exist"),
        ("a,s1,1,2,3,4,5,6,7,8,9", r"manifest.csv:2: 11 fields, expected 12"),
    ],
)
def test_errors_name_line_and_column(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "s1").mkdir()
    m = tmp_path / "manifest.csv"
    m.write_text(HEADER + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(m)


def test_duplicate_ids_and_header_errors(tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    m = tmp_path / "manifest.csv"
    m.write_text("# note: x\n" + HEADER + "a,s1,1,2,3,4,5,6,7,8,9,\n\na,s1,1,2,3,4,5,6,7,8,9,4\n")
    with pytest.raises(
        ManifestError, match=r"manifest.csv:5, column 'case_id': duplicate of line 3"
    ):
        read_manifest(m)
    m.write_text("case_id,path,RCC_x\n")
    with pytest.raises(ManifestError, match=r"manifest.csv:1: missing columns \['RCC_y'"):
        read_manifest(m)
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "absent.csv")


def test_unknown_quality_is_empty_and_paths_can_be_unchecked(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    m.write_text(HEADER + "a,later/s1,1,2,3,4,5,6,7,8,9,\n")
    (row,) = read_manifest(m, check_paths=False)
    assert row.quality == ""
    with pytest.raises(ValueError, match="landmarks must be 3x3"):
        ManifestRow("b", tmp_path, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="duplicate case_id"):
        write_manifest([_row(0, tmp_path), _row(0, tmp_path)], tmp_path / "m2.csv")


def test_ostium_columns_are_optional_and_round_trip(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    lm = np.arange(9, dtype=np.float64).reshape(3, 3)
    both = ManifestRow("both", tmp_path / "s", lm, "2", np.array([[1.5, 2, 3], [4, 5, 6.25]]))
    left_only = ManifestRow("left", tmp_path / "s", lm, "", np.array([[7, 8, 9], [np.nan] * 3]))
    none = ManifestRow("none", tmp_path / "s", lm)
    out = write_manifest([both, left_only, none], tmp_path / "m.csv")
    header = out.read_text().splitlines()[0]
    assert header.endswith(",quality,LCO_x,LCO_y,LCO_z,RCO_x,RCO_y,RCO_z")
    back = {r.case_id: r for r in read_manifest(out)}
    assert back["both"].ostia is not None
    assert back["both"].ostia.tolist() == [[1.5, 2, 3], [4, 5, 6.25]]
    assert np.isnan(back["left"].points(("RCO",))).all()
    assert back["left"].points(("LCO", "RCC")).tolist() == [[7, 8, 9], [0, 1, 2]]
    assert back["none"].ostia is None
    assert np.isnan(back["none"].points(("LCO", "RCO"))).all()
    # a manifest without ostia keeps the original eleven columns
    plain = write_manifest([none], tmp_path / "plain.csv").read_text().splitlines()[0]
    assert plain == HEADER.strip()


def test_ostium_columns_come_all_six_or_none(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    m = tmp_path / "m.csv"
    m.write_text(HEADER.strip() + ",LCO_x,LCO_y\ns,s,1,2,3,4,5,6,7,8,9,,1,2\n")
    with pytest.raises(ManifestError, match="all six or none"):
        read_manifest(m)
    m.write_text(HEADER.strip() + ",LCO_x,LCO_y,LCO_z,RCO_x,RCO_y,RCO_z\n"
                 "s,s,1,2,3,4,5,6,7,8,9,,1,,3,,,\n")  # fmt: skip
    with pytest.raises(ManifestError, match="column 'LCO_y'"):
        read_manifest(m)
