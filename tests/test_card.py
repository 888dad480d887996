"""The dataset card: its numbers recounted from the manifest, its plots, the report command."""

from __future__ import annotations

import argparse
import io
import json
import math
import tarfile
from collections import Counter
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from committed import commit_samples
from conftest import PREP, FoaClip
from fixtures_llm import tiny_llm  # noqa: F401  (a session fixture used below)

from schemas.captions import BatchReport, RephraseRequest, RephraseSettings, ValidationConfig
from schemas.shards import CaptionInfo, DatasetCard, Provenance, RejectRow
from tasks import audio_prep as ap
from tasks.build_stages import _caption_infos, descriptors_of
from tasks.dataset_card import LABELS, compute_card, render_readme, write_card
from tasks.plan import PlanItem
from tasks.rephrase.base import Generated, Generation, RephraseBackend
from tasks.rephrase.phrasing import template_caption
from tasks.rephrase.runner import summarize
from tasks.shard_writer import build_sample, labels_from_rir
from tasks.storage import join_uri, open_storage

DS, VER = "spatial_audiocaps", "v1"
FLAKY_ANSWERS = ("", "Rephrased: A cat meows on the right.", "Un perro ladra bajo la lluvia.")


class FlakyBackend(RephraseBackend):
    """A backend that gets a third of its generations right (the template's faithful rewrite) and
    the rest wrong in different ways, by seed: the real retry, validation and fallback loop then
    yields first-pass, retried and fallback captions with real per-attempt flaws."""

    name = "flaky"

    def _generate(self, jobs: list[Generation]) -> list[Generated]:
        return [Generated(template_caption(j.caption, j.descriptors, j.seed) if j.seed % 3 == 0
                          else FLAKY_ANSWERS[j.seed // 3 % len(FLAKY_ANSWERS)]) for j in jobs]


@pytest.fixture(scope="module")
def flaky(foa_clips) -> tuple[list[object], BatchReport]:
    """Spatial samples whose captions come from FlakyBackend through the build's _caption_infos,
    and the rephrase report of those captions (runner.summarize, straight from the results)."""
    backend = FlakyBackend(RephraseSettings(backend="transformers", model="flaky-lm", max_retries=2))
    items, requests = [], []
    for n, c in enumerate(foa_clips):
        item = PlanItem(key=f"{DS}-train-92{n:03d}-1", dataset=DS, split="train", clip_id=f"92{n:03d}", aug=1,
                        placement_id=c.rir.placement_id, captions=("a dog barks", "rain falls on a tin roof",
                                                                    "a man speaks loudly"),
                        audio_uri="unused", small_eval=False, seed=n)
        d = descriptors_of(c.rir, {c.room.room_id: c.room})
        items.append((item, c, d))
        requests += [RephraseRequest(sample_id=f"{item.key}#{i}", caption=cap, descriptors=d, seed=n)
                     for i, cap in enumerate(item.captions)]
    results = {r.sample_id: r for r in backend.rephrase(requests)}
    out = []
    for item, c, d in items:
        infos, rejected = _caption_infos(item, results, ValidationConfig())
        assert not rejected
        prov = Provenance(source_dataset="audiocaps", source_id=item.clip_id, pipeline_version="0.1.0",
                          seed=0, rephraser_backend=backend.name, rephraser_model=backend.model)
        out.append(build_sample(c.flac, dataset=DS, split="train", clip_id=item.clip_id, aug=1,
                                captions=infos, provenance=prov, labels=labels_from_rir(c.rir, c.room),
                                descriptors=d))
    return out, summarize(list(results.values()))


def recount(m: pd.DataFrame) -> dict[tuple[str, str | None], dict]:
    """Per (backend, model): the caption figures recounted from the manifest with pandas."""
    sp = m[m.spatial]
    out = {}
    keys = [sp.rephraser_backend.fillna("none"), sp.rephraser_model.fillna("")]
    for (backend, model), g in sp.groupby(keys):
        out[(backend, model or None)] = {
            "captions": int(g.n_captions.sum()), "first_pass": int(g.n_first_pass.sum()),
            "retries": int(g.caption_retries.sum()), "retried": int(g.n_retried.sum()),
            "fallback": int(g.n_fallback.sum()),
            "flaw_counts": {k: int(v) for k, v in g.caption_flaws.explode().dropna().value_counts().items()},
        }
    return out


def shard_recount(version_dir: str) -> dict[tuple[str, str | None], dict]:
    """The same figures from the captions in the shards' .json members (tarfile and json only)."""
    out: dict[tuple[str, str | None], dict] = {}
    for tar in sorted(Path(version_dir).glob("*/*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                if not member.name.endswith(".json"):
                    continue
                rec = json.loads(tf.extractfile(member).read())
                if not rec["spatial"]:
                    continue
                prov = rec["provenance"]
                acc = out.setdefault((prov["rephraser_backend"], prov["rephraser_model"]), {
                    "captions": 0, "first_pass": 0, "retries": 0, "retried": 0, "fallback": 0,
                    "flaw_counts": Counter()})
                for cap in rec["captions"]:
                    acc["captions"] += 1
                    acc["first_pass"] += not cap["fallback"] and cap["attempts"] == 1
                    acc["retries"] += max(cap["attempts"] - 1, 0)
                    acc["retried"] += cap["attempts"] > 1
                    acc["fallback"] += cap["fallback"]
                    acc["flaw_counts"].update(f for attempt in cap["attempt_flaws"] for f in attempt)
    return {k: {**v, "flaw_counts": dict(v["flaw_counts"])} for k, v in out.items()}


def assert_backends_match(card: DatasetCard, version_dir: str) -> None:
    """The card's per-backend numbers equal both recounts; the README's caption table shows them."""
    m = pd.read_parquet(join_uri(version_dir, "manifest.parquet"))
    got = {(b.backend, b.model): b for b in card.captions.backends}
    assert set(got) == set(recount(m)) == set(shard_recount(version_dir))
    readme = open_storage(version_dir).read_bytes(join_uri(version_dir, "README.md")).decode()
    for key, want in recount(m).items():
        b = got[key]
        assert want == shard_recount(version_dir)[key]
        assert {k: getattr(b, k) for k in want} == want
        assert list(b.flaw_counts.values()) == sorted(b.flaw_counts.values(), reverse=True)
        n = want["captions"]
        assert b.first_pass_rate == pytest.approx(want["first_pass"] / n, abs=1e-6)
        assert b.mean_retries == pytest.approx(want["retries"] / n, abs=1e-6)
        assert b.retried_rate == pytest.approx(want["retried"] / n, abs=1e-6)
        assert b.fallback_rate == pytest.approx(want["fallback"] / n, abs=1e-6)
        head = f"| {b.backend} | {b.model or '–'} |"
        [row] = [line for line in readme.splitlines() if line.startswith(head)]
        assert row.startswith(
            f"{head} {n} | {100 * want['first_pass'] / n:.1f} % | {want['retries']} "
            f"| {want['retries'] / n:.2f} | {100 * want['retried'] / n:.1f} % "
            f"| {100 * want['fallback'] / n:.1f} % |"
        )
        assert all(f"{flaw}: {count}" in row for flaw, count in want["flaw_counts"].items())


def mono_original(c: FoaClip, clip_id: str, split: str) -> object:
    """A non-spatial original: the prepared clip as 48 kHz mono FLAC with its original caption."""
    clip, _ = ap.prepare_clip(_burst_wav(), PREP)
    flac = ap.encode_flac(clip * 0.5, 48000)
    cap = CaptionInfo(
        original="a dog barks",
        spatial="a dog barks",
        backend="none",
        attempts=0,
        validated=True,
        fallback=False,
    )
    prov = Provenance(source_dataset="audiocaps", source_id=clip_id, pipeline_version="0.1.0", seed=0)
    return build_sample(
        flac, dataset="audiocaps", split=split, clip_id=clip_id, aug=0, captions=[cap], provenance=prov
    )


def _burst_wav() -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(3)
    x = np.zeros(24000, dtype=np.float32)
    x[4800:19200] = rng.standard_normal(14400).astype(np.float32) * 0.2
    bio = io.BytesIO()
    sf.write(bio, x, 48000, format="WAV")
    return bio.getvalue()


@pytest.fixture(scope="module")
def carded(samples, foa_clips, flaky, tmp_path_factory) -> tuple[str, DatasetCard]:
    """A small local dataset (spatial from two rephrasers + mono + rejects) and its card, built once."""
    tmp = tmp_path_factory.mktemp("card")
    items = [
        *samples,
        *flaky[0],
        mono_original(foa_clips[0], "91000", "train"),
        mono_original(foa_clips[1], "91004", "val"),
        RejectRow(stage="render", reason="silent", detail="peak -120 dBFS", source="audiocaps/123"),
        RejectRow(stage="caption", reason="empty_caption", detail="caption is empty", source="audiocaps/9"),
    ]
    commit_samples(items, str(tmp / "out"), max_samples=6, tmp_dir=tmp)
    uri = join_uri(str(tmp / "out"), DS, VER)
    return uri, write_card(uri)


@pytest.fixture
def dataset(carded) -> str:
    return carded[0]


def test_card_numbers_match_a_recount_from_the_manifest(carded):
    dataset, card = carded
    on_disk = DatasetCard.model_validate_json(
        open_storage(dataset).read_bytes(join_uri(dataset, "card.json"))
    )
    assert on_disk == card
    m = pd.read_parquet(join_uri(dataset, "manifest.parquet"))
    rej = pd.read_parquet(join_uri(dataset, "rejects.parquet"))
    assert card.totals.samples == len(m) == 30 and card.totals.mono_samples == 2
    for split, g in m.groupby("split"):
        s = card.splits[split]
        assert s.samples == len(g)
        assert s.hours == pytest.approx(g.duration_s.sum() / 3600, abs=1e-6)
        assert s.shards == g.shard.nunique()
        assert s.bytes == g.drop_duplicates("shard").shard_size.sum()
        assert s.rooms == g.room_id.dropna().nunique()
    sp = m[m.spatial]
    for group, splits in (("train_val", ["train", "val"]), ("test", ["test"])):
        g = sp[sp.split.isin(splits)]
        assert card.group_rooms[group] == g.room_id.nunique()
        for col, _, _ in LABELS:
            assert card.ranges[group][col].min == pytest.approx(g[col].min(), abs=1e-6)
            assert card.ranges[group][col].max == pytest.approx(g[col].max(), abs=1e-6)
    for attr, freq in card.descriptor_frequencies.items():
        recount = sp[f"desc_{attr}"].fillna("none").value_counts().to_dict()
        assert freq == recount
        assert sum(freq.values()) == len(sp)
    assert card.captions.captions == sp.n_captions.sum()
    assert card.captions.validated_rate == pytest.approx(sp.n_validated.sum() / sp.n_captions.sum(), abs=1e-6)
    assert card.captions.fallback_rate == pytest.approx(sp.n_fallback.sum() / sp.n_captions.sum(), abs=1e-6)
    assert 0 < card.captions.fallback_rate < 1
    assert card.label_qa.direct_doa_error_deg_max == pytest.approx(sp.direct_doa_error_deg.max(), abs=1e-6)
    assert card.rejects == rej.reason.value_counts().to_dict() == {"silent": 1, "empty_caption": 1}
    readme = open_storage(dataset).read_bytes(join_uri(dataset, "README.md")).decode()
    assert f"| all | {len(m)} |" in readme and "Table A.T.2" in readme
    t30 = card.ranges["train_val"]["t30_s"]
    assert f"[{t30.min * 1000:.1f}, {t30.max * 1000:.1f}] ms" in readme


def test_card_reports_caption_quality_per_backend(carded, flaky):
    dataset, card = carded
    assert_backends_match(card, dataset)
    by = {b.backend: b for b in card.captions.backends}
    assert set(by) == {"template", "flaky"} and by["flaky"].model == "flaky-lm"
    # The flaky rephraser's figures are those of its own results (the rephrase report's definitions).
    b, report = by["flaky"], flaky[1]
    assert (b.captions, b.first_pass, b.fallback) == (report.n, report.first_pass, report.fallback)
    assert b.retries == report.attempts - report.n and b.flaw_counts == report.flaw_counts
    # A backend that fails sometimes: some captions pass at once, some after retries, some fall back.
    assert b.first_pass > 0 and b.fallback > 0 and b.first_pass + b.retried == b.captions
    assert b.retried > b.fallback  # some retried captions passed
    assert {"empty", "not_english"} <= set(b.flaw_counts) and len(b.flaw_counts) >= 3
    assert sum(b.flaw_counts.values()) >= b.retries + b.fallback  # every failed attempt has a flaw
    assert by["template"].flaw_counts == {} and by["template"].fallback > 0  # conftest's hand-made flags


@pytest.mark.slow
def test_a_build_with_an_llm_rephraser_reports_its_caption_quality(tmp_path, tiny_llm):  # noqa: F811
    """The build (CLI, real flow on an ephemeral Prefect) with the real transformers backend (a tiny
    random LLaMA, whose attempts all fail validation): the card counts every failed attempt's flaws."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "spatial_audiocaps.cli", "build", "--out", str(tmp_path / "out"),
           "--n-rooms", "8", "--limit", "6", "--shard-size", "8", "--workers", "1",
           "--rephraser", "transformers", "--rephraser-model", str(tiny_llm),
           "--set", "rephraser.max_tokens=24", "--set", "rephraser.max_retries=1",
           "--set", "engine.transformers={device: cpu, dtype: float32}"]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    uri = json.loads(next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")))["uri"]
    card = DatasetCard.model_validate_json(open_storage(uri).read_bytes(join_uri(uri, "card.json")))
    assert_backends_match(card, uri)
    [b] = card.captions.backends
    assert (b.backend, b.model) == ("transformers", str(tiny_llm)) and b.captions > 0
    assert b.fallback == b.retried == b.captions and b.retries == b.captions and b.first_pass == 0
    assert sum(b.flaw_counts.values()) >= 2 * b.captions and len(b.flaw_counts) >= 2
    assert write_card(uri, generated_at=card.generated_at) == card  # what `report URI` rebuilds


def test_plots_exist_and_are_not_trivial(carded):
    dataset, card = carded
    st = open_storage(dataset)
    assert len(card.plots) == len(LABELS) + 1
    readme = st.read_bytes(join_uri(dataset, "README.md")).decode()
    for rel in card.plots:
        png = st.read_bytes(join_uri(dataset, rel))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, rel
        img = mpimg.imread(io.BytesIO(png), format="png")
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        rgb = (img[..., :3] * 255).astype(np.uint32)
        colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
        assert colours.size > 20, rel  # bars, shading, text: far from a single colour
        assert f"]({rel})" in readme


def test_report_command_on_s3_rebuilds_the_card(s3, samples, tmp_path):
    from spatial_audiocaps.cli_shards import add_commands

    commit_samples(samples, s3.root, tmp_dir=tmp_path)
    base = join_uri(s3.root, DS, VER)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", base])
    out = args.func(args)
    json.dumps(out, allow_nan=False)
    assert out["samples"] == len(samples) and out["card"] == join_uri(base, "card.json")
    st = open_storage(s3.root)
    card = json.loads(st.read_bytes(join_uri(base, "card.json")))
    assert card["totals"]["samples"] == len(samples)
    assert all(st.exists(join_uri(base, p)) for p in card["plots"])


def test_card_of_an_empty_dataset_still_renders(tmp_path):
    rej = [RejectRow(stage="source", reason="unreadable", detail="no such file", source="x.wav")]
    commit_samples(rej, str(tmp_path / "out"), tmp_dir=tmp_path)
    card = write_card(join_uri(str(tmp_path / "out"), DS, VER))
    assert card.totals.samples == 0 and card.rejects == {"unreadable": 1}
    assert card.captions.validated_rate is None and card.ranges["test"]["t30_s"].min is None
    assert "unreadable: 1" in render_readme(card)


def test_compute_card_is_pure(dataset):
    from tasks.commit import read_manifest, read_rejects

    st = open_storage(dataset)
    rows, rej = read_manifest(st, dataset), read_rejects(st, dataset)
    a = compute_card(rows, rej, dataset=DS, version=VER, generated_at="t")
    reversed_rows = rows.take(np.arange(rows.num_rows)[::-1])
    b = compute_card(reversed_rows, rej, dataset=DS, version=VER, generated_at="t")
    assert a == b
    assert all(math.isfinite(v.hours) for v in a.splits.values())
