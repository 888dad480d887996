"""Shard write + upload throughput to a local S3 server, against raw boto3 upload_file; read-back.

Ours (timed): the commit protocol the build flow runs (tasks.commit), on real FOA samples: per
planned shard ``commit_shard`` (write the tar to a local temporary file, hashing on the way;
upload, multipart with SHA256 checksums; verify with a HEAD against the server's checksum; write
the shard's receipt), shards one after another as one shard task would; then ``finalize_dataset``
(verify every shard, write manifest.parquet, sizes.json and rejects.parquet).

Baseline (same run, same server, same TransferConfig): ``boto3 client.upload_file`` of the very
same tar bytes, already on disk, with boto3's default checksum behaviour. Repeats alternate
baseline and ours; medians are reported. Target: ours <= 1.2x the baseline's time.

Read-back: every shard through a plain ``webdataset.WebDataset`` (s3:// opened in-process by
tasks.storage, and ``pipe:`` URLs that stream through ``python -m tasks.storage cat``), counting
the members' bytes.

Samples are a few FOA clips rendered by the repo's engine, repeated under distinct keys until the
requested size is reached. The server is ``moto_server`` on 127.0.0.1, started here and stopped
by PID. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from room_specs import DEFAULT_CONFIG
from schemas.audio import AudioPrepConfig
from schemas.rooms import RirSettings
from schemas.shards import CaptionInfo, Descriptors, Provenance
from tasks import audio_prep as ap
from tasks.commit import commit_shard, dataset_uri, finalize_dataset, read_manifest, write_shard_file
from tasks.rir_engine import ENGINE_VERSION, measure, render_rir
from tasks.room_sampling import load_config, sample_room_set
from tasks.shard_writer import ShardSample, build_sample, labels_from_rir, plan_samples
from tasks.storage import (
    StorageConfig,
    clear_storage_cache,
    join_uri,
    open_storage,
    register_webdataset_s3,
    webdataset_url,
)

MiB = 1 << 20


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "moto_server"
    fh = open(log, "wb")  # noqa: SIM115 (the child writes to it)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    fh.close()
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return proc, endpoint
        except OSError:
            time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    raise RuntimeError("moto_server did not start")


def make_samples(total_mb: float, n_clips: int = 4) -> list[ShardSample]:
    """Real FOA renders (5 s clips), repeated under distinct keys up to ``total_mb``."""
    cfg = load_config(DEFAULT_CONFIG)
    rooms, placements, digest = sample_room_set(cfg, 0, n_clips)
    by_id = {r.room_id: r for r in rooms}
    prep = AudioPrepConfig(min_loop_s=5.0)
    rng = np.random.default_rng(0)
    base = []
    for i, p in enumerate(placements[:n_clips]):
        room = by_id[p.room_id]
        rr = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg, RirSettings(max_ism_order=10))
        rec = measure(
            rr,
            placement_id=p.placement_id,
            room_id=room.room_id,
            room_set_hash=digest,
            target_t30_s=room.target_t30_s,
            order=1,
        )
        bio = io.BytesIO()
        sf.write(bio, (rng.standard_normal(48000) * 0.2).astype(np.float32), 48000, format="WAV")
        clip, prepared = ap.prepare_clip(bio.getvalue(), prep)
        flac, info = ap.render_clip(clip, ap.RirSpectrum.from_rir(rr.rir), prep)
        base.append((flac, rec, room, prepared, info, i))
    out: list[ShardSample] = []
    size = 0
    k = 0
    while size < total_mb * MiB:
        flac, rec, room, prepared, info, i = base[k % len(base)]
        cap = CaptionInfo(
            original="noise",
            spatial="Noise from somewhere in a room.",
            backend="template",
            attempts=1,
            validated=True,
            fallback=False,
        )
        prov = Provenance(
            source_dataset="bench",
            source_id=str(k),
            room_set_hash=digest,
            pipeline_version="bench",
            engine_version=ENGINE_VERSION,
            seed=0,
            rephraser_backend="template",
            prepared=prepared,
            rendered=info,
        )
        s = build_sample(
            flac,
            dataset="bench",
            split="train",
            clip_id=f"c{k:07d}",
            aug=1,
            captions=[cap],
            provenance=prov,
            labels=labels_from_rir(rec, room),
            descriptors=Descriptors(),
        )
        out.append(s)
        size += s.tar_bytes
        k += 1
    return out


def main() -> None:
    ap_ = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap_.add_argument("--mb", type=float, default=1024.0, help="dataset size in MiB (default 1 GiB)")
    ap_.add_argument("--shard-mb", type=float, default=256.0, help="shard size target in MiB")
    ap_.add_argument("--repeats", type=int, default=3)
    args = ap_.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    proc, endpoint = start_moto(work / "moto.log")
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="AKIABENCHFAKE0000000",
        AWS_SECRET_ACCESS_KEY="benchFakeSecret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    clear_storage_cache()
    try:
        import boto3

        cfg = StorageConfig()
        client = boto3.client("s3")
        bucket = "bench-shards"
        client.create_bucket(Bucket=bucket)
        t0 = time.perf_counter()
        samples = make_samples(args.mb)
        prep_s = time.perf_counter() - t0
        max_bytes = int(args.shard_mb * MiB)
        plans = plan_samples(samples, max_samples=10**9, max_bytes=max_bytes)
        by_key = {s.key: s for s in samples}
        st = open_storage(f"s3://{bucket}", cfg)
        built = [write_shard_file(p, by_key, st, work) for p in plans]  # the baseline's files: the same bytes
        total = sum(b.size for b in built)
        raw_s, ours_s, raw_cpu, ours_cpu, raw_srv, ours_srv = [], [], [], [], [], []
        for r in range(args.repeats):
            c0, s0 = time.process_time(), server_cpu(proc.pid)
            t = time.perf_counter()
            for b in built:
                client.upload_file(str(b.path), bucket, f"raw/{r}/{b.plan.name}", Config=st.transfer)  # type: ignore[attr-defined]
            raw_s.append(time.perf_counter() - t)
            raw_cpu.append(time.process_time() - c0)
            raw_srv.append(server_cpu(proc.pid) - s0)
            for b in built:
                client.delete_object(Bucket=bucket, Key=f"raw/{r}/{b.plan.name}")
            root = f"s3://{bucket}/ours{r}"
            base = dataset_uri(root, "bench", "v1")
            c0, s0 = time.process_time(), server_cpu(proc.pid)
            t = time.perf_counter()
            done = [commit_shard(st, base, p, by_key, tmp_dir=work) for p in plans]
            finalize_dataset(st, base, plans, {"dataset": "bench"})
            ours_s.append(time.perf_counter() - t)
            ours_cpu.append(time.process_time() - c0)
            ours_srv.append(server_cpu(proc.pid) - s0)
            assert [d.outcome for d in done] == ["uploaded"] * len(plans)
            assert sum(len(d.rows) for d in done) == len(samples)
            if r < args.repeats - 1:
                for o in st.list(root + "/"):
                    st.delete(o.uri)
        base_uri = f"s3://{bucket}/ours{args.repeats - 1}/bench/v1"
        rows = read_manifest(st, base_uri, ["shard", "shard_sha256"]).to_pylist()
        same = {r["shard"]: r["shard_sha256"] for r in rows} == {b.plan.name: b.sha256 for b in built}
        for b in built:
            b.path.unlink(missing_ok=True)

        import webdataset as wds

        register_webdataset_s3(cfg)
        urls = [join_uri(base_uri, p.name) for p in plans]
        reads = {}
        for how, us in (("s3_in_process", urls), ("pipe", [webdataset_url(u, "pipe") for u in urls])):
            t = time.perf_counter()
            n = nbytes = 0
            for smp in wds.WebDataset(us, shardshuffle=False):
                n += 1
                nbytes += len(smp["flac"]) + len(smp["json"])
            dt = time.perf_counter() - t
            assert n == len(samples)
            reads[how] = {"s": round(dt, 2), "MBps": round(nbytes / dt / 1e6, 1), "samples": n}
        raw_med, ours_med = statistics.median(raw_s), statistics.median(ours_s)
        result = {
            "benchmark": "shards",
            "dataset_bytes": total,
            "samples": len(samples),
            "shards": len(plans),
            "shard_target_mib": args.shard_mb,
            "repeats": args.repeats,
            "transfer": {
                "multipart_threshold_mib": cfg.multipart_threshold // MiB,
                "multipart_chunksize_mib": cfg.multipart_chunksize // MiB,
                "max_concurrency": cfg.max_concurrency,
            },
            "ours_s": [round(x, 2) for x in ours_s],
            "raw_upload_file_s": [round(x, 2) for x in raw_s],
            "ours_client_cpu_s": [round(x, 2) for x in ours_cpu],
            "raw_client_cpu_s": [round(x, 2) for x in raw_cpu],
            "ours_server_cpu_s": [round(x, 2) for x in ours_srv],
            "raw_server_cpu_s": [round(x, 2) for x in raw_srv],
            "ours_MBps": round(total / ours_med / 1e6, 1),
            "raw_MBps": round(total / raw_med / 1e6, 1),
            "ratio_ours_over_raw": round(ours_med / raw_med, 3),
            "target_ratio": 1.2,
            "pass": ours_med / raw_med <= 1.2,
            "same_bytes_as_baseline": same,
            "read_webdataset": reads,
            "read_1gib_s": round(reads["s3_in_process"]["s"] * (1 << 30) / total, 2),
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
            "sample_prep_s": round(prep_s, 1),
            "server": f"moto_server (moto {_moto_version()}) on 127.0.0.1, same machine",
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        }
        print(json.dumps(result))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _moto_version() -> str:
    import moto

    return moto.__version__


if __name__ == "__main__":
    main()
