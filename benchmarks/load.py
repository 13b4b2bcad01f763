"""Load test of `facecheck serve` on loopback: requests/s and latency at 1, 4 and 16 clients.

    python benchmarks/load.py [--seconds 30] [--clients 1,4,16]

Starts the real server (shipped detector, SQLite in a temporary folder, default settings) as
a subprocess bound to 127.0.0.1, and for each client count runs that many concurrent HTTP
clients, each uploading images in a loop for ``--seconds`` (after a short warm-up), through
``POST /v1/checks`` with an API key. The images are a fixed, seeded draw from
../shared/data: rff real and fake, UTKFace, GAN faces in equal shares, so the mix of verdicts
(and of region scoring, which flagged images pay for) is the data's. Every request must get
201; any other answer or a transport error counts as an error.

The server is run three times: with request batching (--max-batch 16), without (--max-batch
1, the default), and as a panel of two voting members (--members: the shipped bundle a
second time, so the vote's cost is a second pass per upload), to show what batching buys
and what a vote costs. Writes benchmarks/load.json and load.md.
Bounded: loopback only, a fixed duration per level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from facecheck.evaluation.report import machine_description

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SERVE = [sys.executable, "-m", "facecheck.cli", "serve", "--host", "127.0.0.1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(n: int, seed: int) -> list[tuple[str, bytes]]:
    rows = [json.loads(x) for x in (DATA / "manifest.jsonl").read_text().splitlines()]
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(f"{r['source']}/{r['label']}", []).append(r["path"])
    rng = random.Random(seed)
    per = n // len(groups)
    picked = [p for key in sorted(groups) for p in rng.sample(sorted(groups[key]), per)]
    return [(Path(p).name, (DATA / p).read_bytes()) for p in picked]


# Server variants: name -> extra `facecheck serve` options.
VARIANTS = {
    "max_batch_16": ["--max-batch", "16"],
    "max_batch_1": ["--max-batch", "1"],
    # The same bundle twice: its members always agree (no review verdicts from the vote);
    # this measures what a second member's pass costs.
    "panel_2": ["--max-batch", "1", "--members", str(ROOT / "src/facecheck/resources/default")],
}


def _start(data_dir: Path, variant: str) -> tuple[subprocess.Popen, str, str, Path]:
    port = _free_port()
    log = data_dir / f"server-{variant}.log"
    proc = subprocess.Popen(
        [
            *SERVE,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *VARIANTS[variant],
            "--insecure-dev",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    secrets_file = data_dir / "first-start-secrets.txt"
    text = secrets_file.read_text() if secrets_file.exists() else ""
    found = re.search(r"API key 'default': (\S+)", text)
    key = found.group(1) if found else ""
    return proc, base, key, log


async def _level(base: str, key: str, images, clients: int, seconds: float, warmup: float):
    latencies: list[float] = []
    errors = 0
    verdicts: dict[str, int] = {}
    t_end = time.perf_counter() + warmup + seconds
    t_measure = time.perf_counter() + warmup

    async def client(i: int) -> None:
        nonlocal errors
        n = i
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            while (now := time.perf_counter()) < t_end:
                name, data = images[n % len(images)]
                n += clients
                t0 = time.perf_counter()
                try:
                    r = await c.post(
                        "/v1/checks",
                        files={"image": (name, data, "image/jpeg")},
                        headers={"X-API-Key": key},
                    )
                    ok = r.status_code == 201
                    v = r.json()["verdict"] if ok else None
                except httpx.HTTPError:
                    ok, v = False, None
                t1 = time.perf_counter()
                if now >= t_measure:
                    if ok:
                        latencies.append(t1 - t0)
                        verdicts[v] = verdicts.get(v, 0) + 1
                    else:
                        errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    measured = time.perf_counter() - t0 - warmup
    lat = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(measured, 1),
        "requests_per_s": round(len(latencies) / measured, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "verdicts": dict(sorted(verdicts.items())),
    }


def _batch_stats(base: str, key: str) -> tuple[float, float]:
    text = httpx.get(f"{base}/metrics", headers={"X-API-Key": key}).text
    total = float(re.search(r"^facecheck_batch_size_sum (\S+)", text, re.M).group(1))
    count = float(re.search(r"^facecheck_batch_size_count (\S+)", text, re.M).group(1))
    return total, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "load.json")
    args = ap.parse_args()
    images = _images(args.images, args.seed)
    levels = [int(c) for c in args.clients.split(",")]
    runs = {}
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            proc, base, key, _log = _start(Path(tmp), variant)
            try:
                rows = []
                for clients in levels:
                    before = _batch_stats(base, key)
                    row = asyncio.run(_level(base, key, images, clients, args.seconds, args.warmup))
                    after = _batch_stats(base, key)
                    calls = after[1] - before[1]
                    row["mean_batch"] = round((after[0] - before[0]) / calls, 2) if calls else None
                    rows.append(row)
                    print(f"{variant}: {row}", flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        runs[variant] = rows
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "command": "python benchmarks/load.py " + " ".join(sys.argv[1:]),
        "seconds_per_level": args.seconds,
        "warmup_s": args.warmup,
        "images": f"{len(images)} images, seeded draw (seed {args.seed}), equal shares of "
        "rff real, rff fake, utkface real, tpdne fake, fakefaces fake",
        "server": "facecheck serve --insecure-dev, shipped detector, SQLite, default settings "
        "but the variant's options, loopback",
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def markdown(r: dict) -> str:
    lines = [
        "# Load test of `facecheck serve`",
        "",
        f"`{r['command']}` on {r['date']}; {r['machine']}. {r['server']}; client and server "
        f"on the same machine. {r['images']}. Each level: {r['warmup_s']} s warm-up, then "
        f"{r['seconds_per_level']} s measured.",
        "",
        "| server | clients | requests/s | p50 ms | p95 ms | p99 ms | errors | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in r["runs"].items():
        label = {
            "max_batch_16": "batching on (max 16, the default)",
            "max_batch_1": "batching off",
            "panel_2": "panel of 2 members (vote)",
        }.get(name, name)
        for x in rows:
            lines.append(
                f"| {label} | {x['clients']} | {x['requests_per_s']} | {x['p50_ms']} | "
                f"{x['p95_ms']} | {x['p99_ms']} | {x['errors']} | {x['mean_batch']} |"
            )
    verdicts = r["runs"]["max_batch_16"][0]["verdicts"]
    lines += [
        "",
        "Verdicts returned at 1 client (batching on): "
        + ", ".join(f"{k} {v}" for k, v in verdicts.items())
        + ". Flagged images (review/fake) also get region scores (the shipped CLIP detector "
        "reads them from the same pass; crop-based bundles score four crops).",
        "",
        *_batching_verdict(r["runs"]),
        "",
    ]
    return "\n".join(lines)


def _batching_verdict(runs: dict) -> list[str]:
    """Whether batching paid: its gain at the most clients against the run-to-run gap seen
    at 1 client, where both servers score one image per call."""
    on = {x["clients"]: x["requests_per_s"] for x in runs["max_batch_16"]}
    off = {x["clients"]: x["requests_per_s"] for x in runs["max_batch_1"]}
    if 1 not in on or len(on) < 2:
        return []
    top = max(on)
    noise = abs(on[1] / off[1] - 1)
    gain = on[top] / off[top] - 1
    pays = gain > noise
    return [
        f"Batching at {top} clients: {gain:+.1%} requests/s against no batching; at 1 client, "
        f"where both score one image per call, the two runs differ by {noise:.1%} "
        f"(run-to-run variation). Batching {'pays' if pays else 'does not pay'} here."
    ]


if __name__ == "__main__":
    main()
