"""Optuna's interactive plots of a study as one self-contained HTML page that renders with no network.

MLflow's artifact viewer shows an HTML artifact as a blob URL in a sandboxed iframe, so a script
referenced relatively (or from a CDN) never loads there: plotly.js is embedded, once, in one page
that holds every plot (~5 MB, instead of ~5 MB per plot). Slice, contour and parallel-coordinate
plots put log-searched parameters on log axes (Optuna does so from each parameter's distribution).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import optuna
import optuna.visualization as vis

PLOTS: dict[str, tuple[str, Callable]] = {
    "optimization_history": ("objective value of each trial and the best so far", vis.plot_optimization_history),
    "param_importances": ("how much each parameter explains the objective (fANOVA)", vis.plot_param_importances),
    "parallel_coordinate": ("every complete trial across all parameters", vis.plot_parallel_coordinate),
    "slice": ("objective against each parameter (log axes for log-searched ones)", vis.plot_slice),
    "contour": ("objective over pairs of parameters", vis.plot_contour),
    "intermediate_values": ("validation metric per epoch, pruned trials included", vis.plot_intermediate_values),
    "timeline": ("when each trial ran and how it ended", vis.plot_timeline),
}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _optuna_warnings() -> Iterator[list[str]]:
    """Optuna explains an empty plot in a log warning; catch it as the reason instead of printing it."""
    logger = logging.getLogger("optuna")
    handler, propagate, level = _Collect(), logger.propagate, optuna.logging.get_verbosity()
    saved = logger.handlers[:]
    logger.handlers, logger.propagate = [handler], False
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        yield handler.messages
    finally:
        logger.handlers, logger.propagate = saved, propagate
        optuna.logging.set_verbosity(level)


def draw_all(study: optuna.Study) -> tuple[dict, dict[str, str]]:
    """Every plot the study can draw, and for the others why not."""
    figures, skipped = {}, {}
    for name, (_, draw) in PLOTS.items():
        with _optuna_warnings() as messages:
            try:
                figure = draw(study)
            except (ValueError, RuntimeError, ImportError) as error:
                skipped[name] = str(error) or type(error).__name__
                continue
        if not figure.data:
            skipped[name] = messages[-1] if messages else "too few complete trials or parameters for this plot yet"
            continue
        figure.update_layout(title=None, margin=dict(t=30))
        figures[name] = figure
    return figures, skipped


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def study_page(study: optuna.Study, figures: dict, skipped: dict[str, str], metric: str) -> str:
    """One HTML page: a contents list, then each plot under a heading; plotly.js inline, nothing fetched."""
    title = f"Optuna study {study.study_name}: {metric}"
    contents = "".join(
        f'<li><a href="#{n}">{n.replace("_", " ")}</a> &mdash; {html.escape(PLOTS[n][0])}</li>' for n in figures
    )
    contents += "".join(
        f"<li>{n.replace('_', ' ')}: <em>skipped &mdash; {html.escape(why)}</em></li>" for n, why in skipped.items()
    )
    sections = "".join(
        f'<h2 id="{n}">{n.replace("_", " ")}</h2><p>{html.escape(PLOTS[n][0])}</p>'
        + figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
        for n, figure in figures.items()
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1em 2em}h2{margin-top:2em}</style>"
        f'<script type="text/javascript">{plotly_js()}</script></head>'
        f"<body><h1>{html.escape(title)}</h1><ul>{contents}</ul>{sections}</body></html>"
    )
