"""Peak memory of one measured block, for the benches' "peak memory beside each ratio".

On CPU the resident set size of the process is sampled by a background thread (psutil, every ``interval``
seconds) while the block runs: ``peak_mb`` is the largest value seen, ``added_mb`` how far it rose above
the value at the start (what the block itself needed; the process's own baseline, model weights
included, is in ``peak_mb``). A sampler can miss a peak shorter than its interval; the values are lower
bounds. On CUDA, torch's own counter of allocated bytes is reset at the start and read at the end (exact).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil
import torch

MB = 2**20


@dataclass
class Peak:
    peak_mb: float = 0.0  # largest RSS (CPU) or allocated bytes (CUDA) seen during the block
    added_mb: float = 0.0  # peak minus the value at the start of the block
    device: str = "cpu"

    def as_dict(self) -> dict:
        return {"peak_mb": round(self.peak_mb, 1), "added_mb": round(self.added_mb, 1), "memory_of": self.device}


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.peak_mb`` / ``peak.added_mb``."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.result = Peak(device="cuda allocated" if self.device.type == "cuda" else "cpu rss")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> float:
        return self._process.memory_info().rss / MB

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.result.peak_mb = max(self.result.peak_mb, self._rss())

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / MB
            return self.result
        self._process = psutil.Process()
        self._start = self.result.peak_mb = self._rss()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self.result

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result.peak_mb = torch.cuda.max_memory_allocated(self.device) / MB
        else:
            self._stop.set()
            self._thread.join()
            self.result.peak_mb = max(self.result.peak_mb, self._rss())
        self.result.added_mb = max(0.0, self.result.peak_mb - self._start)
