"""Drive the client probe from a testbed: read its answers live as it streams them, stop it.

The probe (``python -m hapair.lab.probe --stream``) prints one JSON line per answer and, when it
stops, one line with every sample. Where it runs (a lab namespace, a container) is the
testbed's business: it hands over the line stream and a way to stop the probe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Final

from hapair.lab.probe import Sample, sample_from_stream
from hapair.lab.shell import LabError

# An upper bound on any one probe run: a drill that hangs still ends the probe.
MAX_PROBE_SECONDS: Final = 300.0
MAX_LIVE_SAMPLES: Final = 100_000
READER_JOIN_TIMEOUT: Final = 10.0


def probe_argv(python: str, target: str, *, duration: float = 120.0) -> list[str]:
    """Return the probe's command line: stream answers, final samples on stdout."""
    return [
        python,
        "-m",
        "hapair.lab.probe",
        "--target",
        target,
        "--stream",
        "--duration",
        str(min(duration, MAX_PROBE_SECONDS)),
    ]


def final_samples(line: str) -> list[Sample] | None:
    """Decode the probe's closing line (every sample); None for any other line."""
    if '"samples"' not in line:
        return None
    try:
        data = json.loads(line)
        return [Sample(**row) for row in data["samples"]]
    except (ValueError, TypeError, KeyError):
        return None


class ProbeRun:
    """One running probe, with the answers it has streamed so far."""

    def __init__(self, lines: Iterable[str], stop: Callable[[], None]) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self._live: list[Sample] = []
        self._final: list[Sample] | None = None
        self._reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self._reader.start()

    def _read(self, lines: Iterable[str]) -> None:
        for line in lines:
            sample = sample_from_stream(line)
            with self._lock:
                if sample is not None:
                    if len(self._live) < MAX_LIVE_SAMPLES:
                        self._live.append(sample)
                elif (closing := final_samples(line)) is not None:
                    self._final = closing

    def answered_by(self, node: str, *, after: float) -> Sample | None:
        """Return the first streamed answer from `node` to a probe sent at/after `after`."""
        with self._lock:
            for s in self._live:
                if s.node == node and s.sent >= after:
                    return s
        return None

    def last_answer(self) -> Sample | None:
        """Return the most recent streamed answer."""
        with self._lock:
            return self._live[-1] if self._live else None

    def stop(self) -> list[Sample]:
        """Stop the probe (bounded) and return every sample it recorded, answered or not."""
        self._stop()
        self._reader.join(timeout=READER_JOIN_TIMEOUT)
        with self._lock:
            if self._final is None:
                raise LabError("the probe ended without writing its samples")
            return list(self._final)


def lines_of(chunks: Iterable[bytes]) -> Iterable[str]:
    """Split a byte stream (arbitrary chunks) into decoded lines."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")
