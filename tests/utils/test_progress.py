"""Progress in a log file is plain lines; on a terminal it stays tqdm's bar."""
from __future__ import annotations

import io

from maskrcnn_pp.utils.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_one_plain_line_per_interval_and_the_final_count():
    log = io.StringIO()
    for _ in ProgressBar(range(500), desc="predict", unit="image", file=log, log_interval=3600):
        pass
    lines = log.getvalue().splitlines(keepends=True)
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert [line.split("|")[0].strip() for line in lines] == ["predict:   0%", "predict: 100%"]
    assert "500/500" in lines[-1] and lines[-1].endswith("\n")


def test_every_update_is_a_line_when_the_interval_is_zero():
    log = io.StringIO()
    with ProgressBar(total=3, desc="blocks", file=log, log_interval=0, mininterval=0) as bar:
        for _ in range(3):
            bar.update()
            bar.clear()
    counts = [line.split("|")[2].split()[0] for line in log.getvalue().splitlines()]
    assert counts == ["0/3", "1/3", "2/3", "3/3"]


def test_a_nested_bar_that_does_not_stay_still_reports_its_end():
    log = io.StringIO()
    for _ in ProgressBar(range(4), desc="tiles", leave=False, position=1, file=log,
                      log_interval=3600):
        pass
    assert log.getvalue().splitlines()[-1].split("|")[2].split()[0] == "4/4"
    assert "\x1b" not in log.getvalue()


def test_a_terminal_keeps_the_redrawn_bar():
    screen = Terminal()
    for _ in ProgressBar(range(3), desc="predict", file=screen, mininterval=0):
        pass
    assert "\r" in screen.getvalue()


def test_disabled_writes_nothing():
    log = io.StringIO()
    for _ in ProgressBar(range(3), file=log, disable=True):
        pass
    assert log.getvalue() == ""
