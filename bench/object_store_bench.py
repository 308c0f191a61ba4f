"""Which S3 client lands events: obstore against boto3, on the same S3-compatible server.

Starts moto's S3 server on loopback, then times sequential PUTs of a landing-sized object
(one group of envelopes) and a listing of one hour prefix with each client, and prints the
median and p95 per call, the ratio, and each client's installed size. The listener's
`bucket` mode waits for one PUT per group, so PUT latency is what a webhook pays.

    .venv/bin/python bench/object_store_bench.py [--puts 300] [--bytes 16384]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from importlib.metadata import distribution
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from layercode_pipeline.simulator.server import free_port  # noqa: E402


def installed_mb(*dists: str) -> float:
    total = 0
    for name in dists:
        for f in distribution(name).files or []:
            p = f.locate()
            if p.exists():
                total += p.stat().st_size
    return total / 1e6


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--bytes", type=int, default=16384)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        import boto3
        import obstore

        from layercode_pipeline.landing.objects import ObjectLanding

        s3 = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        s3.create_bucket(Bucket="bench")
        store = ObjectLanding(
            "s3://bench/obstore", endpoint=endpoint, region="us-east-1", access_key_id="k", secret_access_key="s"
        ).store()
        body = b"x" * args.bytes
        results = {}
        for name in ("obstore", "boto3"):
            times, t_list = [], []
            for i in range(args.puts):
                t = time.perf_counter()
                if name == "obstore":
                    obstore.put(store, f"dt=2026-11-21/hour=09/w-{i:06d}.jsonl", body, mode="create")
                else:
                    s3.put_object(
                        Bucket="bench", Key=f"boto3/dt=2026-11-21/hour=09/w-{i:06d}.jsonl", Body=body, IfNoneMatch="*"
                    )
                times.append(time.perf_counter() - t)
            for _ in range(20):
                t = time.perf_counter()
                if name == "obstore":
                    n = sum(len(b) for b in obstore.list(store, "dt=2026-11-21/hour=09/"))
                else:
                    n = sum(
                        len(p.get("Contents", []))
                        for p in s3.get_paginator("list_objects_v2").paginate(
                            Bucket="bench", Prefix="boto3/dt=2026-11-21/hour=09/"
                        )
                    )
                t_list.append(time.perf_counter() - t)
            assert n == args.puts
            results[name] = (statistics.median(times) * 1000, pct(times, 95), statistics.median(t_list) * 1000)
        print(f"{args.puts} sequential PUTs of {args.bytes} B, then 20 listings of {args.puts} objects, moto server:")
        for name, (p50, p95, lst) in results.items():
            print(f"  {name:8s} PUT p50 {p50:6.2f} ms  p95 {p95:6.2f} ms   list p50 {lst:6.1f} ms")
        print(f"  boto3/obstore PUT p50 ratio: {results['boto3'][0] / results['obstore'][0]:.2f}x")
        print(
            f"  installed: obstore {installed_mb('obstore'):.1f} MB (no dependencies); "
            f"boto3+botocore+s3transfer+jmespath {installed_mb('boto3', 'botocore', 's3transfer', 'jmespath'):.1f} MB"
        )
    finally:
        server.kill()


if __name__ == "__main__":
    main()
