"""results.png: with several fractions, a curve of test loss against the fraction per method and target."""

from __future__ import annotations

from gradsift.experiment.plots import fraction_curves, results_plot
from gradsift.experiment.results import summarize

PNG = b"\x89PNG\r\n\x1a\n"


def grid_rows() -> list[dict]:
    rows = [{"target": t, "method": "base", "model": "m", "fraction": 0.0, "seed": "", "selected": 0, "loss": 3.0,
             "accuracy": None} for t in ("a", "b")]
    for target in ("a", "b"):
        for method, slope in (("fusion", 1.0), ("random", 0.5)):
            for fraction in (0.01, 0.05, 0.25):
                for seed in (0, 1):
                    rows.append({"target": target, "method": method, "model": "m", "fraction": fraction, "seed": seed,
                                 "selected": round(fraction * 1000), "accuracy": None,
                                 "loss": 2.0 - slope * fraction * 4 + seed / 100})
        rows.append({"target": target, "method": "full", "model": "m", "fraction": 1.0, "seed": 0, "selected": 1000,
                     "loss": 0.5, "accuracy": None})
    return rows


def test_fraction_curves_by_hand():
    curves = fraction_curves(summarize(grid_rows()))
    assert list(curves) == ["a", "b"] and list(curves["a"]) == ["fusion", "random", "full"]
    fractions = [f for f, _, _ in curves["a"]["fusion"]]
    assert fractions == [0.01, 0.05, 0.25]
    (f, loss, std), = [p for p in curves["a"]["random"] if p[0] == 0.25]
    assert loss == 2.0 - 0.5 * 0.25 * 4 + 0.005 and abs(std - 0.01 / 2 ** 0.5) < 1e-12
    assert curves["b"]["full"] == [(1.0, 0.5, 0.0)]


def test_results_png_renders_curves_and_bars(tmp_path):
    results_plot(summarize(grid_rows()), tmp_path / "curves.png")
    one = [r for r in grid_rows() if r["fraction"] in (0.0, 0.05)]
    results_plot(summarize(one), tmp_path / "bars.png")
    for name in ("curves.png", "bars.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
