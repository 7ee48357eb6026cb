"""The probe client's stream handling: lines from any chunks, live answers, closing samples."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapair.lab.client import ProbeRun, final_samples, lines_of, probe_argv
from hapair.lab.probe import Sample
from hapair.lab.shell import LabError


def _answer(seq: int, node: str) -> str:
    return json.dumps({"seq": seq, "sent": 10.0 + seq, "answered": 10.5 + seq, "node": node})


def _closing(samples: list[Sample]) -> str:
    rows = [s.__dict__ for s in samples]
    return json.dumps({"target": "10.0.0.50", "port": 7, "late": 0, "samples": rows})


@given(st.lists(st.text(alphabet='ab{}" 0123456789', max_size=30), max_size=8), st.data())
def test_lines_survive_any_chunking(lines: list[str], data: st.DataObject) -> None:
    raw = "".join(line + "\n" for line in lines).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert list(lines_of(chunks)) == lines


def test_a_last_line_without_newline_is_kept() -> None:
    assert list(lines_of([b"one\ntw", b"o"])) == ["one", "two"]


def test_final_samples_reads_only_the_closing_line() -> None:
    closing = _closing([Sample(0, 1.0), Sample(1, 1.01, 1.02, "a", "10.0.0.50")])
    assert final_samples(closing) == [Sample(0, 1.0), Sample(1, 1.01, 1.02, "a", "10.0.0.50")]
    assert final_samples(_answer(3, "a")) is None
    assert final_samples('{"samples": [{"bogus": 1}]}') is None
    assert final_samples("ready") is None


def test_probe_argv_streams_and_bounds_the_duration() -> None:
    argv = probe_argv("python", "10.0.0.50", duration=10_000)
    assert argv[:3] == ["python", "-m", "hapair.lab.probe"]
    assert "--stream" in argv
    assert float(argv[argv.index("--duration") + 1]) == 300.0


class FakeProbe:
    """A line stream the test feeds by hand, ended by stop() as the real probe's SIGTERM does."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ready = threading.Condition()
        self.stopped = False

    def feed(self, line: str) -> None:
        with self.ready:
            self.lines.append(line)
            self.ready.notify_all()

    def stream(self) -> Iterator[str]:
        sent = 0
        while True:
            with self.ready:
                pending = self.ready.wait_for(
                    lambda n=sent: len(self.lines) > n or self.stopped,
                    timeout=5.0,
                )
                if not pending or sent >= len(self.lines):
                    return  # stopped with nothing left, or a stuck test: end the stream
                line, sent = self.lines[sent], sent + 1
            yield line

    def stop(self) -> None:
        with self.ready:
            self.stopped = True
            self.ready.notify_all()


def test_probe_run_sees_live_answers_and_returns_the_closing_samples() -> None:
    fake = FakeProbe()
    run = ProbeRun(fake.stream(), fake.stop)
    fake.feed("not json")
    fake.feed(_answer(1, "a"))
    fake.feed(_answer(2, "b"))
    closing = [Sample(0, 10.0), Sample(1, 11.0, 11.5, "a"), Sample(2, 12.0, 12.5, "b")]
    fake.feed(_closing(closing))
    hit = None
    for _ in range(500):  # bounded: the reader thread needs a moment
        hit = run.answered_by("b", after=11.5)
        if hit is not None:
            break
        threading.Event().wait(0.01)
    assert hit is not None and hit.seq == 2
    assert run.answered_by("a", after=11.5) is None
    assert run.stop() == closing


def test_probe_run_without_closing_samples_is_an_error() -> None:
    fake = FakeProbe()
    run = ProbeRun(fake.stream(), fake.stop)
    fake.feed(_answer(1, "a"))
    with pytest.raises(LabError, match="without writing its samples"):
        run.stop()
