"""The shipped phantom model on a fresh full-size phantom DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glipcore import phantom
from glipcore.bundle import load_bundle
from glipcore.dicomwrite import SeriesMeta, write_ct_series
from glipcore.metrics import euclidean_errors
from glipcore.predict import Predictor
from glipcore.volume_io import load_volume

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "phantom-glip"
FRESH_SEED = 990_001  # never used for training (1000) nor for the evaluation set (424242)


def test_shipped_bundle_verifies_and_says_phantom() -> None:
    b = load_bundle(SHIPPED)
    assert b.phantom_trained
    # trained on a cohort the current generator still draws bit for bit (default options)
    assert b.manifest.metadata["phantom_generator_version"] in phantom.REPRODUCES_DEFAULT_COHORTS_OF
    assert b.manifest.metadata.get("phantom_calcium", "default") == "default"
    assert "not for clinical use" in (SHIPPED / "README.md").read_text().lower()


@pytest.mark.slow
def test_shipped_model_finds_hinges_of_a_fresh_full_size_series(tmp_path: Path) -> None:
    vol, truth = phantom.generate(FRESH_SEED, 0, "full", workers=2)
    write_ct_series(vol, tmp_path, SeriesMeta.synthetic(FRESH_SEED, "fresh-0"))
    loaded = load_volume(tmp_path)
    pred = Predictor(SHIPPED, threads=2, tta_passes=0).predict(loaded)
    err = euclidean_errors(pred.landmarks_lps, truth.landmarks_lps)
    assert np.all(err < 3.0), err
