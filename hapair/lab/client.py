"""Drive the client probe from the lab: start it in the client namespace, watch it live, stop it."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

from hapair.lab.probe import Sample, load_samples, sample_from_stream
from hapair.lab.shell import LabError

if TYPE_CHECKING:
    from hapair.lab.topology import Lab

# An upper bound on any one probe run: a drill that hangs still ends the probe.
MAX_PROBE_SECONDS: Final = 300.0
MAX_LIVE_SAMPLES: Final = 100_000


class ProbeRun:
    """One probe process in the client namespace, with the answers it has streamed so far."""

    def __init__(self, lab: Lab, target: str, *, duration: float = 120.0, key: str = "probe"):
        self.lab = lab
        self.key = key
        self.out = lab.dir / f"{key}.json"
        self.out.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._live: list[Sample] = []
        args = [
            sys.executable,
            "-m",
            "hapair.lab.probe",
            "--target",
            target,
            "--stream",
            "--duration",
            str(min(duration, MAX_PROBE_SECONDS)),
            "--out",
            str(self.out),
        ]
        proc = lab.spawn(key, "c", args, stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, args=(proc.popen,), daemon=True)
        self._reader.start()

    def _read(self, popen: subprocess.Popen[bytes]) -> None:
        if popen.stdout is None:
            return
        for raw in iter(popen.stdout.readline, b""):
            sample = sample_from_stream(raw.decode(errors="replace"))
            if sample is not None:
                with self._lock:
                    if len(self._live) < MAX_LIVE_SAMPLES:
                        self._live.append(sample)

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
        """Stop the probe (SIGTERM, bounded) and return every sample it recorded."""
        self.lab.stop(self.key, sig=signal.SIGTERM, timeout=10.0)
        self._reader.join(timeout=5.0)
        try:
            return load_samples(Path(self.out))
        except (OSError, ValueError, KeyError) as exc:
            raise LabError(f"probe wrote no usable results to {self.out}: {exc}") from exc
