"""The jobs' plots draw without pyplot: a notebook's matplotlib backend survives a job run."""

from __future__ import annotations

import matplotlib

from pyro_dwp.experiments.dwp_classify import plot_figure2


def test_plot_figure2_writes_a_png_and_leaves_the_backend_alone(tmp_path) -> None:
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend
    try:
        summary = {
            ("dwp", 50): {"accuracy": (0.7, 0.02, 3)},
            ("dwp", 100): {"accuracy": (0.8, 0.01, 3)},
            ("normal", 50): {"accuracy": (0.75, 0.03, 3)},
        }
        plot_figure2(tmp_path / "figure2.png", summary)
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "figure2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)
