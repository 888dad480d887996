"""RirSettings.decay_below_hz: T30 and EDT labels measured on W low-passed, for every room source."""

from __future__ import annotations

import pytest
from decay_signals import FS, two_rates

from schemas.rooms import RirSettings
from tasks.errors import SpatialAudioCapsError
from tasks.room_acoustics import measure_response


def test_the_decay_labels_follow_the_band_below_the_cutoff_and_the_rest_stays_broadband():
    rir = two_rates()[None, :]
    broad = measure_response(rir, FS, 0.0, 0.0)
    below = measure_response(rir, FS, 0.0, 0.0, decay_below_hz=4000.0)
    assert broad.t30_s < 1.0  # the blend of the two rates
    assert below.t30_s == pytest.approx(1.2, rel=0.05)
    assert below.edt_s == pytest.approx(1.2, rel=0.15) and broad.edt_s < 0.6  # the blend bends
    assert (below.drr_db, below.c50_db) == (broad.drr_db, broad.c50_db)
    with pytest.raises(SpatialAudioCapsError, match="Nyquist"):
        measure_response(rir, FS, 0.0, 0.0, decay_below_hz=FS / 2)


def test_the_option_is_off_and_out_of_the_settings_hash_by_default():
    """Off, RirSettings dumps as before, so the ELSA build's RIR-bank keys and bytes do not move."""
    assert "decay_below_hz" not in RirSettings().model_dump()
    assert RirSettings(decay_below_hz=8000.0).model_dump()["decay_below_hz"] == 8000.0
    with pytest.raises(ValueError):
        RirSettings(decay_below_hz=0.0)
