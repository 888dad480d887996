"""Sim-to-real evaluation (training.sim2real, flows.sim2real): the summary's arithmetic, the window
averaging, and the whole path: a simulated build, a build over a measured bank, the
``evaluate-sim2real`` flow on a real (temporary) Prefect server, and a report that agrees with the
cases it was computed from and with the test build's samples."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from srir_bank import GEOMETRY, decaying_room

from schemas.build import BuildConfig
from tasks.ambisonics import real_sh_sn3d, vector_to_angles
from tasks.build_stages import build_in_process
from training.checkpoint import load_trained
from training.config import TINY_SPATIAL, FeatureConfig, SpatialBranchConfig
from training.doa_probe import angular_errors_deg, directions_from_angles
from training.field_augment import field_group
from training.model import intensity_prior
from training.sim2real import (
    CaseMismatchError,
    CaseResult,
    LabelConventionError,
    Sim2RealConfig,
    Sim2RealReport,
    check_label_conventions,
    check_targets,
    combine_runs,
    ensemble_answer,
    run_sim2real,
    sim_like_cases,
    summarise,
    window_features,
    window_heads,
)
from training.spatial_branch import load_spatial_branch

REPO = Path(__file__).resolve().parents[1]


def _case(az: float, pred_az: float, err: float, classical: float | None, t30: float | None = 1.0,
          t30_pred: float = 1.5, drr: float = 5.0, drr_pred: float = 2.0, room: str = "r",
          pred_el: float = 0.0) -> CaseResult:
    return CaseResult(key=f"k{az}-{pred_az}-{err}", room_id=room, azimuth_deg=az, elevation_deg=0.0,
                      model_azimuth_deg=pred_az, model_elevation_deg=pred_el, model_doa_error_deg=err,
                      classical_doa_error_deg=classical,
                      t30_s=t30, t30_pred_s=t30_pred, drr_db=drr, drr_pred_db=drr_pred)


def test_summary_medians_side_agreement_and_missing_labels():
    cases = [
        _case(90.0, 80.0, 10.0, 5.0, pred_el=10.0),  # lateral, same side
        _case(-90.0, 100.0, 170.0, 7.0, pred_el=20.0),  # lateral, wrong side
        _case(60.0, 50.0, 20.0, None, t30=None, pred_el=-5.0),  # lateral (sin 60 > 0.5); no estimate or T30
        _case(0.0, 10.0, 30.0, 9.0, t30=2.0, t30_pred=1.0, drr=0.0, drr_pred=0.0, pred_el=30.0),  # frontal
    ]
    s = summarise(cases)
    assert s.n == 4 and s.doa_model_median_deg == pytest.approx(25.0)
    assert s.doa_classical_median_deg == pytest.approx(7.0) and s.classical_unestimated == 1
    assert s.t30_cases == 3  # the unlabelled one is not scored
    assert s.t30_rel_error_median == pytest.approx(0.5)  # |1.5/1 - 1| twice, |1/2 - 1| once
    assert s.drr_abs_error_median_db == pytest.approx(3.0)
    assert s.lateral_agreement == pytest.approx(2 / 3)
    assert s.elevation_bias_model_deg == pytest.approx(15.0)  # labels at 0: median of 10, 20, -5, 30
    # azimuth offsets, wrapped to +-180: -10, -170 (190 wrapped), -10, +10; no case has a classical answer
    assert s.azimuth_bias_model_deg == pytest.approx(-10.0)
    assert s.azimuth_bias_classical_deg is None and s.elevation_bias_classical_deg is None
    with pytest.raises(ValueError):
        summarise([])


def test_an_offset_the_classical_estimator_shares_is_reported_beside_the_models():
    """A room measured with its mic turned 6 deg and tilted 5 deg down against its labels: both answers
    carry the offset, and the summary shows it in both, so it is read as the recording's, not the
    branch's. Offsets wrap at +-180 (a label at 178 answered at -176 is 6 deg off, not -354)."""
    cases = [CaseResult(key=f"k{az}", room_id="r", azimuth_deg=az, elevation_deg=el,
                        model_azimuth_deg=az + 6.0 - (360.0 if az + 6.0 >= 180.0 else 0.0),
                        model_elevation_deg=el - 5.0, model_doa_error_deg=7.8, classical_doa_error_deg=7.8,
                        classical_azimuth_deg=az + 6.5 - (360.0 if az + 6.5 >= 180.0 else 0.0),
                        classical_elevation_deg=el - 4.0, t30_s=None, t30_pred_s=1.0, drr_db=0.0,
                        drr_pred_db=0.0)
             for az, el in ((178.0, 10.0), (-90.0, 0.0), (0.0, -20.0), (45.0, 30.0), (176.0, 0.0))]
    s = summarise(cases)
    assert s.azimuth_bias_model_deg == pytest.approx(6.0)
    assert s.elevation_bias_model_deg == pytest.approx(-5.0)
    assert s.azimuth_bias_classical_deg == pytest.approx(6.5)
    assert s.elevation_bias_classical_deg == pytest.approx(-4.0)
    unanswered = cases[0].model_copy(update={"classical_azimuth_deg": None, "classical_elevation_deg": None,
                                              "classical_doa_error_deg": None, "key": "silent"})
    assert summarise([*cases, unanswered]).azimuth_bias_classical_deg == pytest.approx(6.5)  # not counted


def test_simulated_cases_like_a_room_are_those_within_the_targets_tolerances():
    """A simulated case is like a real room when its DRR is within 3 dB of the room's median label and,
    where the room has T30 labels, its T30 within 25 % of theirs; without T30 labels DRR alone decides."""
    room = summarise([_case(az, 0.0, 1.0, 1.0, t30=1.2, drr=5.0) for az in (0.0, 1.0)])
    sims = {
        "in": _case(10.0, 0.0, 1.0, 1.0, t30=1.45, drr=7.9),
        "t30_long": _case(11.0, 0.0, 1.0, 1.0, t30=1.55, drr=5.0),  # 29 % over
        "t30_short": _case(12.0, 0.0, 1.0, 1.0, t30=0.85, drr=5.0),  # 29 % under
        "drr_low": _case(13.0, 0.0, 1.0, 1.0, t30=1.2, drr=1.9),
        "no_t30": _case(14.0, 0.0, 1.0, 1.0, t30=None, drr=5.0),
    }
    assert [c.key for c in sim_like_cases(list(sims.values()), room)] == [sims["in"].key]
    dry = summarise([_case(0.0, 0.0, 1.0, 1.0, t30=None, drr=5.0)])  # a room with no T30 label
    assert {c.key for c in sim_like_cases(list(sims.values()), dry)} == {
        sims[k].key for k in ("in", "t30_long", "t30_short", "no_t30")}


def test_heads_see_every_window_of_a_clip_and_its_rest():
    feat = FeatureConfig(clip_s=1.0)
    rng = np.random.default_rng(0)
    for n, windows in ((48_000 * 5 // 2, 3), (48_000 * 3, 3), (48_000 + 1, 2), (20_000, 1)):
        iv, mel = window_features(rng.standard_normal((4, n)).astype(np.float32), feat)
        assert iv.shape == (windows, 6, 101, 64) and mel.shape == (windows, 1, 101, 64)


def test_a_sound_in_the_clips_rest_is_heard():
    """A 2.5 s clip at 1 s windows whose only loud sound is its last 0.4 s, from the left (a quiet
    source in front before it): the answer is the left one. With whole windows only, that rest was
    never heard and the answer was the front."""
    feat = FeatureConfig(clip_s=1.0)
    rng = np.random.default_rng(1)
    n, loud = feat.max_samples * 5 // 2, int(0.4 * feat.sample_rate)
    audio = np.zeros((4, n), np.float32)
    for (start, stop), az, gain in (((0, n - loud), 0.0, 0.01), ((n - loud, n), 90.0, 1.0)):
        audio[:, start:stop] = gain * real_sh_sn3d(1, np.radians([az]), np.radians([0.0]))[:, :1] * (
            rng.standard_normal(stop - start))
    unit, _ = window_heads(_PowerWeightedIv(), audio, feat)
    az, el = vector_to_angles(unit)
    assert abs(float(az) - 90.0) < 2.0 and abs(float(el)) < 2.0


class _PowerWeightedIv(torch.nn.Module):
    """Heads that answer each window with its power-weighted intensity direction (model.intensity_prior)."""

    def forward(self, iv: torch.Tensor, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"direction": intensity_prior(iv, mel), "t30": torch.zeros(len(iv))}


class _MeanActiveIv(torch.nn.Module):
    """Heads that answer each window with its mean active IV (a plane wave's direction) and a 'T30' of
    the window's index: what the window weighting does becomes visible in the answer."""

    def forward(self, iv: torch.Tensor, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"direction": iv[:, :3].mean(dim=(2, 3)), "t30": torch.arange(len(iv), dtype=torch.float32)}


def test_windows_vote_by_their_energy():
    """A clip whose first window holds a loud source on the left and whose second holds a source 30 dB
    quieter in front: the answer is the left one (an equal vote would land half-way, at 45 deg); the room
    heads are not weighted (their answer is the windows' plain mean)."""
    feat = FeatureConfig(clip_s=1.0)
    rng = np.random.default_rng(0)
    n = feat.max_samples
    audio = np.zeros((4, 2 * n), np.float32)
    for k, (az, gain) in enumerate(((90.0, 1.0), (0.0, 10 ** (-30 / 20)))):
        audio[:, k * n : (k + 1) * n] = gain * real_sh_sn3d(1, np.radians([az]), np.radians([0.0]))[:, :1] * (
            rng.standard_normal(n))
    unit, heads = window_heads(_MeanActiveIv(), audio, feat)
    az, el = vector_to_angles(unit)
    assert abs(float(az) - 90.0) < 1.0 and abs(float(el)) < 1.0
    assert heads["t30"] == pytest.approx(0.5)


class _TiltedMeanActiveIv(torch.nn.Module):
    """A branch that is not equivariant: it answers a plane wave's direction tilted by 20 deg about y
    (front goes down, up goes front), whichever way the field is turned."""

    def forward(self, iv: torch.Tensor, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        c, s = math.cos(math.radians(20.0)), math.sin(math.radians(20.0))
        tilt = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        return {"direction": iv[:, :3].mean(dim=(2, 3)) @ tilt.T, "t30": torch.full((len(iv),), 0.7)}


def test_averaging_over_turned_fields_cancels_most_of_a_fixed_tilt():
    """A plane wave from (60, 10) deg: the tilted branch is 10.4 deg off on the field as recorded. Over
    field_group(4) the tilt's off-axis parts average to zero and what is left, diag((1 + cos 20)/2,
    (1 + cos 20)/2, cos 20), moves a 10 deg elevation by 0.3 deg; the room head is averaged as it is."""
    feat = FeatureConfig(clip_s=1.0)
    audio = real_sh_sn3d(1, np.radians([60.0]), np.radians([10.0]))[:, :1] * (
        np.random.default_rng(0).standard_normal(2 * feat.max_samples))
    truth = directions_from_angles(np.array([60.0]), np.array([10.0]))
    once, _ = window_heads(_TiltedMeanActiveIv(), audio.astype(np.float32), feat)
    averaged, heads = window_heads(_TiltedMeanActiveIv(), audio.astype(np.float32), feat, field_group(4))
    assert float(angular_errors_deg(once[None], truth)[0]) > 10.0
    assert float(angular_errors_deg(averaged[None], truth)[0]) < 0.5
    assert heads["t30"] == pytest.approx(0.7)


def test_members_vote_once_each_and_average_the_room_heads():
    """Three members answer 80, 100 and 90 deg azimuth with window agreements (norms) of 1, 0.2 and 0.5:
    one vote each gives 90 deg; a sum of the raw vectors would lean to 80. T30 and DRR are the plain
    means; the per-member errors reach the summary as medians over the cases."""
    def answer(az: float, norm: float, t30: float, drr: float):
        return norm * directions_from_angles(np.array([az]), np.array([0.0]))[0], {"t30": t30, "drr": drr}

    unit, heads = ensemble_answer([answer(80.0, 1.0, 1.0, 0.1), answer(100.0, 0.2, 1.3, 0.4),
                                   answer(90.0, 0.5, 1.6, 0.7)])
    az, el = vector_to_angles(unit)
    assert float(az) == pytest.approx(90.0, abs=1e-6) and float(el) == pytest.approx(0.0, abs=1e-6)
    assert heads == pytest.approx({"t30": 1.3, "drr": 0.4})
    single, _ = ensemble_answer([answer(30.0, 0.3, 1.0, 0.0)])
    assert np.allclose(single, directions_from_angles(np.array([30.0]), np.array([0.0]))[0])
    cases = [_case(0.0, 1.0, 1.0, 1.0).model_copy(update={"member_doa_errors_deg": m})
             for m in ((1.0, 9.0), (2.0, 7.0), (30.0, 8.0))]
    assert summarise(cases).doa_member_medians_deg == pytest.approx((2.0, 8.0))
    assert summarise([_case(0.0, 1.0, 1.0, 1.0)]).doa_member_medians_deg == ()


def test_runs_scored_alone_combine_into_the_members_answer():
    """combine_runs answers each case as ``members`` would from the runs' own answers: one vote per run
    (80 and 100 deg around a source at 90: 90 deg, error 0; 10 and -10 deg at 20 deg up around one at 0:
    straight ahead, 20.3 deg up), the plain mean of T30 and DRR, each run's error kept as a member's.
    Runs scored on other cases, or a single run, are refused."""
    a = [_case(90.0, 80.0, 10.0, 5.0, t30_pred=1.0, drr_pred=1.0),
         _case(0.0, 10.0, 21.0, 3.0, pred_el=20.0, room="s")]
    b = [a[0].model_copy(update={"model_azimuth_deg": 100.0, "t30_pred_s": 2.0, "drr_pred_db": 3.0}),
         a[1].model_copy(update={"model_azimuth_deg": -10.0, "model_doa_error_deg": 22.0})]
    lateral, ahead = combine_runs([a, b])
    assert lateral.model_azimuth_deg == pytest.approx(90.0, abs=1e-4)
    assert lateral.model_doa_error_deg == pytest.approx(0.0, abs=1e-3)
    assert (lateral.t30_pred_s, lateral.drr_pred_db) == pytest.approx((1.5, 2.0))
    up = math.degrees(math.atan(math.tan(math.radians(20.0)) / math.cos(math.radians(10.0))))
    assert ahead.model_azimuth_deg == pytest.approx(0.0, abs=1e-4)
    assert ahead.model_elevation_deg == pytest.approx(up, abs=1e-3)
    assert ahead.model_doa_error_deg == pytest.approx(up, abs=1e-3)
    assert ahead.member_doa_errors_deg == (21.0, 22.0) and ahead.key == a[1].key and ahead.room_id == "s"
    with pytest.raises(CaseMismatchError):
        combine_runs([a, b[::-1]])
    with pytest.raises(ValueError, match="at least two"):
        combine_runs([a])


def test_the_members_benchmark_judges_every_combination_of_runs():
    """Three runs answer a source at 90 deg with 80, 100 and 90 deg (errors 10, 10, 0) against the
    classical estimator's 6: alone, one meets the direction target; every pair (90, 85, 95) and the
    triple (90) do."""
    bench = _bench("sim2real_members")
    base = _case(90.0, 80.0, 10.0, 6.0, t30_pred=1.1, drr_pred=4.0)
    runs = {"a": [base], "b": [base.model_copy(update={"model_azimuth_deg": 100.0})],
            "c": [base.model_copy(update={"model_azimuth_deg": 90.0, "model_doa_error_deg": 0.0})]}
    table = bench.combination_table(runs)
    assert table["1"] == {"combinations": 3, "direction_met": 1, "all_met": 1, "pooled_median_deg": 10.0,
                          "pooled_best_deg": 0.0, "pooled_worst_deg": 10.0}
    assert (table["2"]["combinations"], table["2"]["direction_met"], table["2"]["all_met"]) == (3, 3, 3)
    assert table["2"]["pooled_worst_deg"] == pytest.approx(5.0, abs=0.01)
    assert table["3"]["direction_met"] == 1 and table["3"]["pooled_worst_deg"] == pytest.approx(0.0, abs=0.01)


def test_a_run_says_which_of_the_targets_it_meets():
    """Direction: at most the classical estimator's median and at most 12 deg; T30: within 25 % in every
    room with T30 labels (none: undecided); DRR: within 3 dB pooled. Each is met or missed alone."""
    def room(doa: float, classical: float | None, t30_pred: float | None, drr_pred: float = 3.0):
        return summarise([_case(0.0, 1.0, doa, classical, t30=None if t30_pred is None else 1.0,
                                t30_pred=t30_pred or 1.0, drr=5.0, drr_pred=drr_pred)])

    church, lab = room(8.0, 9.0, 1.2), room(8.0, 9.0, None)
    assert check_targets({"church": church, "lab": lab}, church).model_dump() == {
        "direction": True, "t30": True, "drr": True}
    assert not check_targets({"c": church}, room(9.5, 9.0, 1.2)).direction  # worse than the estimator
    assert not check_targets({"c": church}, room(13.0, 14.0, 1.2)).direction  # better, but over 12 deg
    assert not check_targets({"c": church}, room(8.0, None, 1.2)).direction  # nothing to compare with
    assert check_targets({"c": church, "c2": room(8.0, 9.0, 0.7)}, church).t30 is False  # one church at 30 %
    assert check_targets({"lab": lab}, lab).t30 is None
    missed_drr = check_targets({"c": church}, room(8.0, 9.0, 1.2, drr_pred=1.5))  # 3.5 dB off
    assert (missed_drr.direction, missed_drr.t30, missed_drr.drr) == (True, True, False)


def test_the_flows_table_shows_each_members_direction_only_when_there_are_several():
    from flows.sim2real import _table

    cases = [_case(0.0, 1.0, e, 1.0).model_copy(update={"member_doa_errors_deg": (e + 1.0, e - 1.0)})
             for e in (4.0, 6.0)]
    room = summarise(cases)
    report = Sim2RealReport(train_root="sim", test_roots=("real",), train_steps=1, members=2,
                            train_examples_seen=2, train_cpu_s=1.0, eval_cpu_s=1.0, rooms={"r": room},
                            pooled=room)
    rows = _table(report).splitlines()
    assert rows[0].endswith("DOA per member (deg) |") and rows[-1].endswith("| 6.0 / 4.0 |")
    single = _table(report.model_copy(update={"members": 1})).splitlines()
    assert "member" not in single[0] and single[-1].endswith("| 3.0 |")
    judged = _table(report.model_copy(update={"targets": check_targets(report.rooms, report.pooled)}))
    assert judged.splitlines()[-1] == "Issue 15's targets: direction missed, t30 missed, drr met"


@pytest.mark.slow
@pytest.mark.prefect_server
def test_the_flow_trains_on_a_simulated_build_and_scores_a_measured_one(tmp_path):
    """A tiny ELSA build trains the (tiny, level-reading) branch; a synthetic measured bank of known
    geometry is the test room. Every single-source spatial sample of every split of the test build is
    scored once, the report's medians are those of its cases, and the classical estimator agrees with
    the labels on the bank (a direct impulse from the labelled direction; whole-clip estimates over its
    diffuse tail and the demo clips measured 9.6 deg median), which shows the labels and audio are the
    bank's. Two members are trained (on seeds 0 and 1) and answer as one; each one's error is kept."""
    small = {"train": 4, "val": 2, "test": 2}
    sim = build_in_process(BuildConfig(source="demo", limit=6, n_rooms=6, shard_size=16, augmentations=small),
                           str(tmp_path / "sim"))
    bank = decaying_room(tmp_path / "bank" / "booth", 6)
    (bank / "room_dims.json").write_text(json.dumps({"booth": [8.0, 7.0, 3.0]}))
    real = build_in_process(BuildConfig(source="demo", limit=6, dataset="booth", room_source="measured",
                                        bank=str(bank), shard_size=16), str(tmp_path / "real"))
    twin = build_in_process(BuildConfig(source="demo", limit=6, dataset="booth_twin", room_source="twin",
                                        bank=str(bank), shard_size=16), str(tmp_path / "twin"))
    cfg = Sim2RealConfig(train_root=sim, test_roots=(real,), twin_roots=(twin,),
                         run_dir=str(tmp_path / "run"), steps=3, batch_size=4, clip_s=1.0,
                         spatial=TINY_SPATIAL.model_copy(update={"level_input": True,
                                                                  "iv_level_exponent": 0.25}),
                         num_workers=0, iv_scale="energy", sim_control_every=2, direction_prior=True,
                         members=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "OMP_NUM_THREADS": "1"}
    code = ("import sys\nfrom flows.sim2real import evaluate_sim2real\n"
            "from training.sim2real import Sim2RealConfig\n"
            "if __name__ == '__main__':\n"
            "    r = evaluate_sim2real(Sim2RealConfig.model_validate_json(sys.argv[1]))\n"
            "    print(r.model_dump_json())\n")
    res = subprocess.run([sys.executable, "-c", code, cfg.model_dump_json()], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    report = Sim2RealReport.model_validate_json(res.stdout.strip().splitlines()[-1])
    assert report == Sim2RealReport.model_validate_json((tmp_path / "run" / "sim2real.json").read_text())
    cases = [CaseResult.model_validate_json(line)
             for line in (tmp_path / "run" / "cases.jsonl").read_text().splitlines()]

    manifest = pq.read_table(Path(real) / "manifest.parquet").to_pylist()
    spatial = {r["key"] for r in manifest if r["spatial"]}
    assert {c.key for c in cases} == spatial and len(cases) == len(spatial) > 0
    assert set(report.rooms) == {"booth"} and report.pooled == summarise(cases) == report.rooms["booth"]
    labelled = {(az, el) for az, el, _ in GEOMETRY}
    assert all((c.azimuth_deg, c.elevation_deg) in labelled for c in cases)
    classical = report.pooled.doa_classical_median_deg
    assert classical is not None and classical < 15.0
    assert all(math.isfinite(c.t30_pred_s) and math.isfinite(c.drr_pred_db) for c in cases)
    # the recorded predicted direction is the one the error was measured on
    pred = directions_from_angles(np.array([c.model_azimuth_deg for c in cases]),
                                  np.array([c.model_elevation_deg for c in cases]))
    truth = directions_from_angles(np.array([c.azimuth_deg for c in cases]),
                                   np.array([c.elevation_deg for c in cases]))
    assert np.allclose(angular_errors_deg(pred, truth), [c.model_doa_error_deg for c in cases], atol=1e-3)
    # and so is the classical one, which every estimated case keeps for the offsets beside the model's
    estimated = [i for i, c in enumerate(cases) if c.classical_doa_error_deg is not None]
    assert estimated and all(cases[i].classical_azimuth_deg is not None for i in estimated)
    guess = directions_from_angles(np.array([cases[i].classical_azimuth_deg for i in estimated]),
                                   np.array([cases[i].classical_elevation_deg for i in estimated]))
    assert np.allclose(angular_errors_deg(guess, truth[estimated]),
                       [cases[i].classical_doa_error_deg for i in estimated], atol=1e-3)
    assert report.pooled.azimuth_bias_classical_deg is not None
    assert report.train_steps == 3 and report.members == 2 and report.train_examples_seen == 24
    assert report.train_cpu_s > 0
    members = [tmp_path / "run" / f"member-{k}" for k in range(2)]
    assert [load_trained(str(m))[2].seed for m in members] == [0, 1]
    # every case keeps each member's own error, and the mean's answer is not simply one member's
    assert all(len(c.member_doa_errors_deg) == 2 for c in cases)
    assert any(abs(c.model_doa_error_deg - e) > 1e-6 for c in cases for e in c.member_doa_errors_deg)
    assert len(report.pooled.doa_member_medians_deg) == 2
    for m in members:
        assert (m / "spatial_branch.pt").exists()
        # the branch that was trained and scored read the level (the benchmark's default)
        assert load_spatial_branch(str(m / "spatial_branch.pt")).cfg.level_input
        # and energy-scaled IVs: the run's config carries them, so scoring featurises as training did
        assert load_trained(str(m))[2].features.iv_scale == "energy"
        # and the direction head that corrects the intensity direction, restored from the run's config
        assert load_trained(str(m))[0].direction_prior
    twins = [CaseResult.model_validate_json(line)
             for line in (tmp_path / "run" / "twin_cases.jsonl").read_text().splitlines()]
    twin_keys = {r["key"] for r in pq.read_table(Path(twin) / "manifest.parquet").to_pylist() if r["spatial"]}
    assert {c.key for c in twins} == twin_keys and report.twin_pooled == summarise(twins)
    assert set(report.twin_rooms) == {"booth"}
    assert all((c.azimuth_deg, c.elevation_deg) in labelled for c in twins)
    assert report.twin_pooled.doa_classical_median_deg < 15.0  # the shoebox twin agrees with the labels too
    assert json.loads((tmp_path / "run" / "sim2real.json").read_text())["pooled"]["n"] == len(cases)
    # the in-simulation control: every second spatial sample of the simulated build's train split
    sims = [CaseResult.model_validate_json(line)
            for line in (tmp_path / "run" / "sim_cases.jsonl").read_text().splitlines()]
    trained = [r for r in pq.read_table(Path(sim) / "manifest.parquet").to_pylist()
               if r["split"] == "train" and r["spatial"]]
    assert len(sims) == math.ceil(len(trained) / 2) > 0
    assert report.train_samples == len(trained)  # the training-set size is what the cache held
    assert {c.key for c in sims} <= {r["key"] for r in trained} and report.sim_pooled == summarise(sims)
    assert report.sim_like == {room: summarise(like) for room, s in report.rooms.items()
                               if (like := sim_like_cases(sims, s))}
    assert report.targets == check_targets(report.rooms, report.pooled)

    # reuse rescores the trained branch without training again: same log, same report
    logs_before = [(m / "log.jsonl").read_text() for m in members]
    again = run_sim2real(cfg, reuse=True)
    assert [(m / "log.jsonl").read_text() for m in members] == logs_before
    assert again.train_cpu_s == report.train_cpu_s
    rescored, scored = again.pooled.model_dump(), report.pooled.model_dump()  # in another process
    key = "doa_member_medians_deg"
    assert rescored.pop(key) == pytest.approx(scored.pop(key), rel=1e-5)
    assert rescored == pytest.approx(scored, rel=1e-5)


@pytest.mark.parametrize("flag", ["speed=2", "t30", "t30=fast", "t30=-1"])
def test_the_benchmark_refuses_a_loss_weight_it_cannot_apply(flag):
    """A mistyped --loss-weight must stop the benchmark before any build, on any machine, rather
    than train an hour-long run on the default weights under a name that claims otherwise."""
    cmd = [sys.executable, "benchmarks/sim2real.py", "--loss-weight", flag, "--out", "/nonexistent"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "--loss-weight wants TERM=W" in res.stderr and flag in res.stderr


def _bench(name: str = "sim2real"):
    """benchmarks/<name>.py as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "benchmarks" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_runs_under_other_training_options_get_their_own_directories():
    """Two runs in one --out must not share runs/<name>: the second would overwrite the first, and
    --reuse would rescore a branch trained under other settings (session 14's fmax runs collided)."""
    bench = _bench()
    flags = [[], ["--fmax", "4000"], ["--fmax", "3000"], ["--steps", "3000"], ["--rooms", "200"],
             ["--aug", "50"], ["--batch", "16"], ["--clip-s", "3"], ["--tiny"], ["--seed", "1"],
             ["--iv-scale", "unit"], ["--no-level-input"], ["--field-augment", "none"], ["--room-balance"],
             ["--direction-by-energy"], ["--fmax", "4000", "--steps", "3000"], ["--direction-prior"],
             ["--decay-below", "0"], ["--fmin", "50"], ["--tail-turn", "0.05"],
             ["--iv-level-exponent", "0.5"], ["--members", "1"], ["--members", "3"]]
    names = [bench.run_name("realism", bench.parser().parse_args(f), {}) for f in flags]
    assert len(set(names)) == len(flags), names
    # The level weighting and the members are named even at their defaults: runs trained before these
    # became the defaults (sessions 21 and 22) were named without them, and --reuse must not take them
    # for runs trained with them.
    assert names[0] == "realism-rotate_mirror-level-members2-iv_level_exponent0.25"
    assert names[flags.index(["--members", "1"])] == "realism-rotate_mirror-level-iv_level_exponent0.25"
    assert names[flags.index(["--no-level-input"])] == "realism-rotate_mirror-members2"
    unweighed = bench.run_name("realism", bench.parser().parse_args(["--iv-level-exponent", "0", "--members",
                                                                      "1"]), {})
    assert unweighed == "realism-rotate_mirror-level" and unweighed not in names
    assert bench.run_name("realism", bench.parser().parse_args([]), {"t30": 2.0}) != names[0]


def test_tail_turn_reaches_every_training_build_and_no_other(tmp_path):
    """--tail-turn S is a training-data option: each variant's simulated build turns its tails from S
    on (a new version), and without it the build is the one earlier runs trained on."""
    bench = _bench()
    for variant in bench.VARIANTS:
        plain = BuildConfig.model_validate(bench.variant_config(variant, tmp_path / "t.csv", tmp_path, 10, 2))
        turned = BuildConfig.model_validate(bench.variant_config(variant, tmp_path / "t.csv", tmp_path, 10, 2,
                                                                 tail_turn_s=0.05))
        assert plain.audio.tail_turn is None and turned.audio.tail_turn.after_s == 0.05
        assert plain.versioned() != turned.versioned()
        assert turned.model_copy(update={"audio": plain.audio}).versioned() == plain.versioned()


def test_the_benchmark_trains_the_flows_recipe_unless_told_otherwise():
    """evaluate-sim2real and benchmarks/sim2real.py must train one recipe (the one RESULTS.md measured),
    so a deployment run reproduces the recorded figures; and every option the benchmark takes must
    reach the run's config, or a run named for an option would not have trained with it."""
    bench = _bench()
    as_run = bench.sim2real_config(bench.parser().parse_args([]), {}, "sim", ("real",), ("twin",), "run")
    assert as_run == Sim2RealConfig(train_root="sim", test_roots=("real",), twin_roots=("twin",),
                                    run_dir="run", torch_threads=2)
    flags = ["--fmin", "50", "--fmax", "4000", "--iv-scale", "unit", "--no-level-input", "--steps", "7",
             "--batch", "8", "--clip-s", "3", "--seed", "2", "--field-augment", "none", "--room-balance",
             "--direction-prior", "--direction-by-energy", "--test-turns", "2", "--sim-control-every", "0",
             "--members", "3"]
    told = bench.sim2real_config(bench.parser().parse_args(flags), {"t30": 2.0}, "sim", ("real",), (), "run")
    assert (told.fmin_hz, told.fmax_hz, told.iv_scale, told.steps, told.batch_size, told.clip_s) == (
        50.0, 4000.0, "unit", 7, 8, 3.0)
    assert (told.seed, told.field_augment, told.room_balance, told.direction_prior) == (
        2, "none", True, True)
    assert (told.test_turns, told.sim_control_every, told.spatial, told.members) == (
        2, 0, SpatialBranchConfig(level_input=False), 3)
    assert told.loss.t30 == 2.0 and told.loss.direction_by_energy
    weighed = bench.sim2real_config(bench.parser().parse_args(["--iv-level-exponent", "0.5"]), {}, "sim",
                                    ("real",), (), "run")
    assert weighed.train_config().model.spatial.iv_level_exponent == 0.5
    with pytest.raises(ValueError, match="level_input"):  # refused before any build or training
        bench.sim2real_config(bench.parser().parse_args(["--iv-level-exponent", "0.5", "--no-level-input"]),
                              {}, "sim", ("real",), (), "run")
    assert told.loss.distance == Sim2RealConfig.model_fields["loss"].default.distance  # the rest kept
    tiny = bench.sim2real_config(bench.parser().parse_args(["--tiny"]), {}, "sim", ("real",), (), "run")
    assert tiny.spatial == TINY_SPATIAL.model_copy(update={"level_input": True, "iv_level_exponent": 0.25})


def _labelled_version(root: Path, **rir) -> str:
    """A version directory holding only the build.json a build with these RirSettings writes."""
    root.mkdir(parents=True)
    (root / "build.json").write_text(json.dumps(BuildConfig(source="demo", rir=rir).versioned()))
    return str(root)


def test_a_run_refuses_builds_whose_t30_labels_were_measured_in_other_bands(tmp_path):
    """A T30 label measured below 8 kHz is not a broadband one (in the engine's rooms 1.16 times
    longer, in S3A's churches 1.03-1.04: benchmarks/t30_bands.py), so a run that trains on one and
    scores on the other must stop before it trains, naming each build's band."""
    sim = _labelled_version(tmp_path / "sim", decay_below_hz=8000.0)
    real = _labelled_version(tmp_path / "real", decay_below_hz=8000.0)
    cfg = Sim2RealConfig(train_root=sim, test_roots=(real,), run_dir=str(tmp_path / "run"))
    assert check_label_conventions(cfg) == 8000.0
    assert check_label_conventions(cfg.model_copy(update={
        "train_root": _labelled_version(tmp_path / "sim_bb"),
        "test_roots": (_labelled_version(tmp_path / "real_bb"),)})) is None
    mixed = cfg.model_copy(update={"twin_roots": (_labelled_version(tmp_path / "twin"),)})
    with pytest.raises(LabelConventionError, match=r"twin: broadband") as e:
        run_sim2real(mixed)
    assert f"{sim}: 8000.0" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before training
    with pytest.raises(LabelConventionError, match=r"no build\.json"):
        check_label_conventions(cfg.model_copy(update={"test_roots": (str(tmp_path),)}))
