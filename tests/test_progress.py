"""The progress line: plain lines at intervals in logs, a redrawn line in a terminal, process 0."""

import io
import types

import jax
import pytest

from matchme_jax import progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)
    return fake


def _count(clock, bar, updates: int, first_s: float = 1.0) -> None:
    """`updates` updates one second apart, the first `first_s` after the start (compilation)."""
    for i in range(updates):
        clock.now += first_s if i == 0 else 1.0
        bar.update()


def test_a_log_gets_one_line_per_interval_and_a_final_one(clock, capsys):
    with progress.Progress(100, desc="gen 1 (student) train", unit="steps", interval_s=10) as bar:
        _count(clock, bar, 95, first_s=50.0)  # the first step compiles for 50 s
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    # 144 s of updates (50 + 94 x 1 s): a line at most every 10 s, then the final line.
    assert 2 <= len(lines) <= 144 // 10 + 1
    assert all(line.startswith("gen 1 (student) train  ") for line in lines)
    # The rate leaves out the compiling first step: 1 step/s, so 5 steps take 5 s.
    assert lines[-1] == "gen 1 (student) train  95/100 (95%)  1 steps/s  elapsed 2:24  ETA 0:05"


def test_the_interval_comes_from_the_environment_and_off_silences(clock, capsys, monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "60")
    with progress.Progress(10) as bar:
        assert bar.interval_s == 60.0
        _count(clock, bar, 10)
    assert len(capsys.readouterr().err.splitlines()) == 1  # 10 s: only the final line
    monkeypatch.setenv(progress.INTERVAL_ENV, "off")
    with progress.Progress(10) as bar:
        _count(clock, bar, 10)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=progress.INTERVAL_ENV):
        progress.Progress(10)


def test_a_terminal_gets_one_redrawn_line(clock, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress.Progress(5, desc="eval") as bar:
        _count(clock, bar, 3)
        bar.clear()  # a log line goes here
        terminal.write("a log line\n")
        _count(clock, bar, 2)
    out = terminal.getvalue()
    assert out.count("\r") >= 5 and out.endswith("\n")
    assert out.count("\n") == 2  # the log line's and the final one: the rest are redraws
    assert "\r\x1b[Ka log line\n" in out
    assert out.rsplit("\r", 1)[1] == "eval  5/5 (100%)  1 it/s  elapsed 0:05  ETA 0:00\x1b[K\n"


def test_a_nested_loop_starts_below_the_outer_line(clock, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress.Progress(2, desc="cells") as outer:
        for _ in range(2):
            for _ in progress.track(range(3), desc="cell"):
                clock.now += 1.0
            outer.update()
    lines = terminal.getvalue().split("\n")
    # Each inner loop ends its line; the outer line stays above the next inner one.
    finals = [line.rsplit("\r", 1)[-1] for line in lines]
    assert [f.split("  ")[:2] for f in finals if f] == [
        ["cell", "3/3 (100%)"],
        ["cells", "1/2 (50%)"],
        ["cell", "3/3 (100%)"],
        ["cells", "2/2 (100%)"],
    ]


@pytest.mark.parametrize("stderr", [None, Terminal()], ids=["log", "terminal"])
def test_only_process_zero_shows_progress(clock, capsys, monkeypatch, stderr):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    if stderr is not None:
        monkeypatch.setattr("sys.stderr", stderr)
    assert list(progress.track(range(4), desc="annotate")) == [0, 1, 2, 3]
    with progress.Progress(3, interval_s=0) as bar:
        _count(clock, bar, 3)
        bar.clear()
    assert capsys.readouterr().err == ""
    assert stderr is None or stderr.getvalue() == ""


def test_track_counts_what_it_yields_and_knows_the_length(clock, capsys):
    items = list(progress.track([10, 20, 30], desc="x", interval_s=1e9))
    assert items == [10, 20, 30]
    assert capsys.readouterr().err.startswith("x  3/3 (100%)")
    assert list(progress.track(iter([]), desc="empty")) == []
    assert capsys.readouterr().err == ""  # nothing counted, no line


def test_no_rate_before_the_second_update_and_a_resumed_count(clock, capsys):
    with progress.Progress(20, desc="gen 0 train", initial=10, interval_s=5) as bar:
        _count(clock, bar, 1, first_s=60.0)  # compiling: no rate to tell yet
        _count(clock, bar, 4)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "gen 0 train  11/20 (55%)  - it/s  elapsed 1:00  ETA ?",
        "gen 0 train  15/20 (75%)  1 it/s  elapsed 1:04  ETA 0:05",
    ]
