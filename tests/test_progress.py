"""Waiting in a pipe or a log: one plain line per finished wait, no carriage-return frames."""

import io

import pytest

from seedx_agent.progress import DenoiseBars, is_terminal, status
from seedx_agent.types import DenoiseStep


def test_status_prints_one_line_when_done_or_failed():
    stream = io.StringIO()
    assert not is_terminal(stream)
    with status("loading model 'tiny' (cpu)", stream):
        pass
    with pytest.raises(ValueError), status("loading model 'broken' (cpu)", stream):
        raise ValueError("no")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("loading model 'tiny' (cpu): done in ")
    assert lines[1].startswith("loading model 'broken' (cpu): failed in ")


def test_denoise_bars_print_one_line_per_image():
    stream = io.StringIO()
    bars = DenoiseBars(stream)
    assert bars.animate is False
    for index in (0, 1):
        for step in range(1, 4):
            bars.step(DenoiseStep(index=index, step=step, total=3))
        assert stream.getvalue().count("\n") == index  # nothing while it runs
        bars.done(index)
    bars.step(DenoiseStep(index=2, step=1, total=3))
    bars.close()  # an abandoned image is reported with the steps it got
    assert stream.getvalue().splitlines()[0].startswith("denoised image 0: 3/3 steps in ")
    assert stream.getvalue().splitlines()[2].startswith("denoised image 2: 1/3 steps in ")
    assert "\r" not in stream.getvalue()
