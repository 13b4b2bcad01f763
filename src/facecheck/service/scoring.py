"""Scoring uploads for the service: content sniffing, the review band, request batching.

The detector runs in one worker thread (PyTorch already uses every core for one image), fed
by :class:`BatchScorer`: with ``max_batch > 1``, whatever requests are waiting when the worker
becomes free are scored as one batch (there is no batching window, so a lone request never
waits). On the 2-core CPU this bought nothing (benchmarks/load.md), so the service's default
is 1; the option is there for GPU hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from facecheck.detector.pipeline import Detector, Verdict

# Magic numbers of the formats imageio accepts: the client's Content-Type is never trusted.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"WEBP", 8, "image/webp"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
)

VERDICTS = ("real", "fake", "review", "no_face", "multiple_faces", "invalid_image")


def sniff(data: bytes) -> str | None:
    """The media type the bytes start with, or None if they are no accepted image format."""
    for magic, offset, media in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            if media == "image/webp" and not data.startswith(b"RIFF"):
                continue
            return media
    return None


def panel_verdict(verdicts: Sequence[Verdict]) -> tuple[str, list[dict[str, object]] | None]:
    """The thesis's vote over several members, each at its own threshold: all say real ->
    ``real``, all say fake -> ``fake``, any disagreement -> ``review`` (a person decides).
    An upload the first member cannot judge (no face, unreadable) keeps that verdict.
    Returns the verdict and each member's vote (shown on the case page)."""
    first = verdicts[0]
    if first.verdict not in ("real", "fake"):
        return (first.verdict if first.verdict in VERDICTS else "invalid_image"), None
    votes = [
        {
            "member": v.model_version,
            "fake_probability": v.fake_probability,
            "threshold": v.threshold,
            "vote": v.verdict,
        }
        for v in verdicts
    ]
    fakes = sum(v.verdict == "fake" for v in verdicts)
    if fakes == 0:
        return "real", votes
    return ("fake" if fakes == len(verdicts) else "review"), votes


def service_verdict(v: Verdict, fake_above: float | None) -> str:
    """The detector's real/fake split into real / review / fake by the review band.

    Below the detector's validation threshold: real. At or above ``fake_above``: fake.
    Between (or at or above the threshold when no ``fake_above`` is set): review.
    """
    if v.verdict not in ("real", "fake"):
        return v.verdict if v.verdict in VERDICTS else "invalid_image"
    if v.verdict == "real":
        return "real"
    p = float(v.fake_probability or 0.0)
    return "fake" if fake_above is not None and p >= fake_above else "review"


class Busy(RuntimeError):
    """More uploads are waiting for the model than the service accepts (answer 503)."""


@dataclass
class Scored:
    verdict: Verdict
    service_verdict: str
    timing_ms: float
    batch_size: int
    votes: list[dict[str, object]] | None = None


class BatchScorer:
    """Scores uploads with one detector in one worker thread, batching waiting requests."""

    def __init__(
        self,
        detector: Detector,
        *,
        fake_above: float | None = None,
        max_batch: int = 16,
        max_pending: int = 32,
        regions: str = "flagged",
        members: Sequence[Detector] = (),
    ):
        self.detector = detector
        # Further voting members: with any, the verdict is the panel's (panel_verdict)
        # and the review band (fake_above) does not apply.
        self.members = list(members)
        self.fake_above = fake_above
        self.max_batch = max_batch
        # Bounded: a flood of uploads waits in no unbounded queue (each holds its bytes).
        self.max_pending = max_pending
        self.regions = regions
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facecheck-model")
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_pending)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.executor.shutdown(wait=True)

    async def run(self, fn, *args):
        """Run anything else that uses the detector (e.g. ``explain``) on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def score(self, data: bytes, name: str = "upload") -> Scored:
        if self._queue is None:
            raise RuntimeError("BatchScorer.start() was not awaited")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((data, name, fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise Busy(f"{self.max_pending} uploads are waiting for the model; retry") from None
        return await fut

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                verdicts = await loop.run_in_executor(
                    self.executor,
                    lambda b=batch: self.detector.check(
                        [x[0] for x in b], [x[1] for x in b], regions=self.regions
                    ),
                )
                others = [
                    await loop.run_in_executor(
                        self.executor,
                        lambda b=batch, m=m: m.check(
                            [x[0] for x in b], [x[1] for x in b], regions="none"
                        ),
                    )
                    for m in self.members
                ]
            except Exception as exc:  # a model failure fails these requests, not the server
                for *_, fut, _t0 in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            done = time.perf_counter()
            for i, ((_d, _n, fut, t0), v) in enumerate(zip(batch, verdicts, strict=True)):
                if fut.done():
                    continue
                if self.members:
                    said, votes = panel_verdict([v, *(o[i] for o in others)])
                else:
                    said, votes = service_verdict(v, self.fake_above), None
                fut.set_result(Scored(v, said, round((done - t0) * 1000, 1), len(batch), votes))
