"""The batch hand-off through shared memory (feedback.handoff): values arrive intact, small batches stay
in-band, and segments of an ingestor that was killed are removed by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from feedback import handoff
from feedback.batch import RawBatch

REPO = Path(__file__).resolve().parents[1]


def _batch(values: list[bytes | None]) -> RawBatch:
    raw = RawBatch("t")
    for i, v in enumerate(values):
        raw.add(0, i, 1_700_000_000_000 + i, v)
    return raw


def test_a_big_batch_travels_in_shared_memory_and_arrives_intact() -> None:
    values: list[bytes | None] = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 300)) for i in range(8000)]
    values[17] = None  # a tombstone
    values[18] = b""
    raw = _batch(values)
    assert raw.nbytes >= handoff.MIN_SHARED_BYTES
    segments, mappings = handoff.Segments(), handoff.Mappings()
    try:
        shipped, ticket, seg = segments.ship(raw)
        assert ticket is not None and seg is not None and ticket.segment.startswith(f"{handoff.PREFIX}{os.getpid()}-")
        assert list(shipped.values) == [] and shipped.offsets == raw.offsets  # only the coordinates go pickled
        got = mappings.values(ticket)
        assert len(got) == len(values) and [got[i] for i in range(len(values))] == values
        segments.give_back(seg)
        again, ticket2, seg2 = segments.ship(_batch(values[::-1]))
        assert seg2 is seg and ticket2 is not None  # the segment is reused, not made again
        got = mappings.values(ticket2)
        assert [got[i] for i in range(len(values))] == values[::-1]
        del got
    finally:
        mappings.close()
        segments.close()
    assert not (handoff.SHM_DIR / ticket.segment).exists()


def test_a_small_batch_travels_in_band() -> None:
    raw = _batch([b'{"a": 1}', None])
    shipped, ticket, seg = handoff.Segments().ship(raw)
    assert ticket is None and seg is None and shipped is raw


def test_sweep_removes_only_the_segments_of_ingestors_that_are_gone(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    for name in (f"{handoff.PREFIX}{dead}-0", f"{handoff.PREFIX}{dead}-3", f"{handoff.PREFIX}{os.getpid()}-0",
                 f"{handoff.PREFIX}1-0", "psm_0123abcd", f"{handoff.PREFIX}x-1"):
        (tmp_path / name).write_bytes(b"0")
    removed = handoff.sweep(tmp_path)
    assert sorted(removed) == [f"{handoff.PREFIX}{dead}-0", f"{handoff.PREFIX}{dead}-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{handoff.PREFIX}{os.getpid()}-0", f"{handoff.PREFIX}1-0", "psm_0123abcd", f"{handoff.PREFIX}x-1"])


@pytest.mark.skipif(not handoff.SHM_DIR.is_dir(), reason="no /dev/shm on this system")
def test_segments_of_a_killed_ingestor_are_removed_by_the_next_one() -> None:
    """SIGKILL leaves no chance to unlink; the next ``Segments`` (a restarted ingestor) removes them."""
    script = textwrap.dedent("""
        import os, signal
        from multiprocessing import resource_tracker
        from feedback import handoff
        from feedback.batch import RawBatch
        raw = RawBatch("t")
        for i in range(4000):
            raw.add(0, i, None, b"x" * 400)
        _, ticket, _ = handoff.Segments().ship(raw)
        # the resource tracker would unlink the segment when this process dies; a SIGKILL of the whole process
        # group (a container stopped hard) takes the tracker too: untrack it, so only the next ingestor can remove it
        resource_tracker.unregister("/" + ticket.segment, "shared_memory")
        print(ticket.segment, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    name = proc.stdout.split()[0]
    assert name.startswith(handoff.PREFIX)
    assert (handoff.SHM_DIR / name).exists()  # left behind: nothing else removes it
    handoff.Segments().close()
    assert not (handoff.SHM_DIR / name).exists()


def test_without_shared_memory_batches_travel_in_band(monkeypatch, caplog) -> None:
    """A full or missing /dev/shm: one warning, then every batch goes through the pipe as before."""
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(handoff.shared_memory, "SharedMemory", full)
    segments = handoff.Segments()
    raw = _batch([b"x" * 400] * 4000)
    with caplog.at_level("WARNING", logger="feedback.handoff"):
        for _ in range(3):
            shipped, ticket, seg = segments.ship(raw)
            assert ticket is None and seg is None and shipped is raw
    assert sum("travel through the pipe" in r.getMessage() for r in caplog.records) == 1
