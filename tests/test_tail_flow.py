"""The diffuse tail's energy flow (``RirSettings.tail_flow``): the direction the late field arrives
from follows the room's absorption as the images do, W and the calibrated T30 do not move, each
dipole keeps a third of W's energy, and with the option off nothing changes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from schemas.rooms import SURFACES, RirSettings, RoomSpec, Surface
from tasks import room_acoustics
from tasks.rir_bank import bank_key
from tasks.rir_engine import RenderedRir, render_rir, tail_flow

FS = 48000
_BAND = butter(4, [300.0, 3000.0], btype="band", fs=FS, output="sos")
# A church-like hall: hard walls and vault, an absorbing floor (pews, audience).
HALL_ALPHA = (0.15, 0.15, 0.15, 0.15, 0.6, 0.05)
HALL = (30.0, 18.0, 14.0)
RECEIVER, SOURCE = (12.0, 8.0, 1.6), (17.0, 11.0, 1.8)


def _room(alpha: tuple[float, ...], dims: tuple[float, float, float], t30: float) -> RoomSpec:
    surfaces = {w: Surface(material="x", absorption=[a] * 8, scattering=[0.2] * 8)
                for w, a in zip(SURFACES, alpha, strict=True)}
    return RoomSpec(room_id="t", dims_m=dims, surfaces=surfaces, target_t30_s=t30)


@pytest.fixture(scope="module")
def hall() -> dict[tuple[bool, float], RenderedRir]:
    """The hall's calibrated RIR with the flow off and on, facing 0 and 40 degrees."""
    return {(on, yaw): render_rir(_room(HALL_ALPHA, HALL, 1.3), RECEIVER, SOURCE, yaw_deg=yaw,
                                  settings=RirSettings(order=1, tail_flow=on))
            for on in (False, True) for yaw in (0.0, 40.0)}


def test_the_tail_arrives_as_the_model_says(hall):
    """200-800 ms, all tail. Measured: off (0.003, 0.000, -0.032), a chance correlation of the
    noises; on (0.011, 0.005, 0.176) against the model's (0.008, 0.005, 0.206), which the same
    chance correlation, scaled by sqrt(1 - 3 a^2), pulls down by 0.028."""
    spec = _room(HALL_ALPHA, HALL, 1.3)
    for yaw in (0.0, 40.0):
        # 1 kHz; absorption is flat here
        model = tail_flow(spec, hall[(True, yaw)].absorption_scale, RECEIVER, yaw)[:, 3]
        assert model[2] > 0.15  # from above, onto the absorbing floor
        off, on = (room_acoustics.net_flow(hall[(flowing, yaw)].rir, FS, 0.2, 0.8)
                   for flowing in (False, True))
        assert np.linalg.norm(off) < 0.06, off
        np.testing.assert_allclose(on, model, atol=0.05)


def test_w_and_t30_do_not_move(hall):
    """The flow mixes W's noise into the dipoles; W itself is the same samples, so the calibration
    and the T30 (measured 1.296 s against 1.3) are those of the isotropic render."""
    for yaw in (0.0, 40.0):
        assert np.array_equal(hall[(True, yaw)].rir[0], hall[(False, yaw)].rir[0])
    assert room_acoustics.t30(hall[(True, 0.0)].rir[0], FS) == pytest.approx(1.3, rel=0.03)


def test_each_dipole_keeps_a_third_of_w(hall):
    """The SN3D diffuse field's energy split survives the mixing: a flow is a correlation, not
    extra energy. Measured over 0.2-1.5 s, three seeds: 0.303-0.345 both ways (the estimate's own
    spread; 0.5-1.2 s alone spreads to 0.31-0.39)."""
    for on in (False, True):
        tail = sosfiltfilt(_BAND, hall[(on, 0.0)].rir, axis=-1)[:, int(0.2 * FS): int(1.5 * FS)]
        ratios = (tail[1:] ** 2).sum(axis=1) / (tail[0] ** 2).sum()
        np.testing.assert_allclose(ratios, 1 / 3, rtol=0.1)


def test_the_flow_turns_with_the_receiver():
    """Facing 90 degrees, the room's +x is the receiver's -y (right)."""
    spec = _room((0.7, 0.05, 0.2, 0.2, 0.2, 0.2), (8.0, 6.0, 3.0), 0.6)
    ahead, turned = (tail_flow(spec, 1.0, (2.0, 3.0, 1.5), yaw) for yaw in (0.0, 90.0))
    np.testing.assert_allclose(turned, np.stack([ahead[1], -ahead[0], ahead[2]]), atol=1e-12)
    assert ahead[0, 0] > 0.1  # near the absorbing west wall (x = 0), energy arrives from +x


def test_capped_in_length_whatever_the_yaw():
    """Next to two walls absorbing 99 %, the model's flow (1.15 per axis) is cut to length 0.5, the
    same in every frame; the render stays finite with the receiver turned 45 degrees (capping each
    axis in the room frame let a turned component reach 0.71, past a dipole's 0.577: NaN samples)."""
    spec = _room((0.99, 0.1, 0.99, 0.1, 0.1, 0.1), (6.0, 5.0, 3.0), 0.3)
    receiver = (0.5, 0.5, 1.5)
    for yaw in (0.0, 45.0, 137.0):
        assert np.linalg.norm(tail_flow(spec, 1.0, receiver, yaw), axis=0) == pytest.approx(0.5)
    rir = render_rir(spec, receiver, (3.0, 3.0, 1.5), yaw_deg=45.0,
                     settings=RirSettings(order=1, tail_flow=True, calibrate=False)).rir
    assert np.isfinite(rir).all()


def test_strongest_next_to_the_absorber():
    """Along the axis the flow is linear: A_lo at the low wall, -A_hi at the high wall, where A is the
    Millington exchange -ln(1 - alpha) / 4; halfway it is their mean difference."""
    spec = _room((0.2, 0.2, 0.2, 0.2, 0.6, 0.05), (10.0, 10.0, 4.0), 1.0)
    a_lo, a_hi = -np.log1p(-0.6) / 4, -np.log1p(-0.05) / 4
    z = [tail_flow(spec, 1.0, (5.0, 5.0, h), 0.0)[2, 3] for h in (0.0, 2.0, 4.0)]
    np.testing.assert_allclose(z, [a_lo, (a_lo - a_hi) / 2, -a_hi], rtol=1e-9)


def test_the_images_flow_the_same_way():
    """The specular images, which carry no model of the flow, agree with it where they are complete.

    20-50 ms after the direct sound in a 6 x 5 x 4 m room (images to order 20: complete), averaged
    over 12 source/receiver pairs, 300-3000 Hz. Measured with 16 pairs: z 0.085 +- 0.065 (sd) for an
    absorbing floor against the model's centre value 0.108; 0.068 along x for an absorbing west wall
    against 0.080; the other axes within 0.015 of 0. (Later, the specular field turns grazing along
    the reflecting axes and the images' flow weakens, 0.056 at 100-150 ms: diffuse reflection,
    which the tail stands for, keeps the directions mixed.)"""
    rng = np.random.default_rng(0)
    dims = (6.0, 5.0, 4.0)
    settings = RirSettings(order=1, late_tail=False, calibrate=False, max_ism_order=20, length_factor=1.0)
    for alpha, axis in (((0.15, 0.15, 0.15, 0.15, 0.6, 0.05), 2), ((0.5, 0.05, 0.15, 0.15, 0.15, 0.15), 0)):
        spec = _room(alpha, dims, 0.8)
        flows = []
        while len(flows) < 12:
            rec, src = (tuple(rng.uniform(0.7, np.array(dims) - 0.7)) for _ in range(2))
            if np.linalg.norm(np.subtract(rec, src)) > 1.0:
                rir = render_rir(spec, rec, src, settings=settings).rir
                flows.append(room_acoustics.net_flow(rir, FS, 0.02, 0.05))
        mean = np.mean(flows, axis=0)
        centre = tail_flow(spec, 1.0, tuple(d / 2 for d in dims), 0.0)[:, 3]
        assert 0.6 * centre[axis] < mean[axis] < 1.3 * centre[axis], (mean, centre)
        assert np.all(np.abs(np.delete(mean, axis)) < 0.04), mean


def test_option_off_is_left_out_of_dumps_and_keys():
    assert "tail_flow" not in RirSettings().model_dump()
    room = [_room(HALL_ALPHA, HALL, 1.3)]
    assert bank_key(room, [], RirSettings()) != bank_key(room, [], RirSettings(tail_flow=True))
