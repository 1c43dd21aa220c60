"""The timeline as a PNG: a stacked chart an operator reads at a glance (when did the
worm start, when did the signatures arrive). matplotlib's Agg canvas, never pyplot: no
display, no global figure state."""

from __future__ import annotations

from pathlib import Path

import matplotlib.dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from blocklist.chart_style import CHROME, OUTCOME_COLOURS, nice_ticks
from blocklist.reports import OUTCOMES, Timeline

Y_TICKS = 8  # at most as many steps on the y axis (the console's shorter chart has 4)
LABELS = {"unknown_rcpt": "unknown recipient", "relay_denied": "relay denied",
          "dnsbl": "DNSBL", "blocked": "blocked at connect", "trap": "spam trap"}
DPI = 100


def bucket_label(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m"


def draw_timeline(timeline: Timeline, path: Path, *, width: int = 1200,
                  height: int = 600) -> Path:
    """Write the chart to `path` as a `width` x `height` pixel PNG."""
    build_figure(timeline, width=width, height=height).savefig(path, format="png", dpi=DPI)
    return path


def build_figure(timeline: Timeline, *, width: int = 1200, height: int = 600) -> Figure:
    """The chart as a Figure, apart from writing it, so that a test can read its axes."""
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    times = [t for t, _ in timeline.buckets]
    step = timeline.step
    # step-wise edges: each bucket is a flat band from its start to its end
    xs = [*times, times[-1] + step] if times else []
    shown = [o for o in OUTCOMES if any(c[o] for _, c in timeline.buckets)] or ["accepted"]
    series = [[c[o] for _, c in timeline.buckets] for o in shown]
    series = [[*s, s[-1]] if s else [] for s in series]
    if xs:
        ax.stackplot(xs, *series, labels=[LABELS.get(o, o) for o in shown],
                     colors=[OUTCOME_COLOURS[o] for o in shown], step="post", linewidth=0)
        ax.set_xlim(xs[0], xs[-1])
    locator = mdates.AutoDateLocator(tz=timeline.start.tzinfo)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator,
                                                             tz=timeline.start.tzinfo))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(f"events per {bucket_label(step.total_seconds())}")
    # round ticks (1, 2 or 5 x 10^n) from 0 to the first one over the tallest stack
    ticks = nice_ticks(max((sum(c.values()) for _, c in timeline.buckets), default=0), Y_TICKS)
    ax.set_yticks(ticks)
    ax.set_ylim(0, ticks[-1])
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # 25,000 as the console
    ax.grid(True, axis="y", color=CHROME["line"])
    ax.set_axisbelow(True)
    ax.tick_params(colors=CHROME["muted"], labelcolor=CHROME["ink"])
    for side in ax.spines.values():
        side.set_color(CHROME["muted"])
    fmt = "%Y-%m-%d %H:%M"
    ax.set_title(f"Floodgate outcomes per {bucket_label(step.total_seconds())}, "
                 f"{timeline.start.strftime(fmt)} to {timeline.end.strftime(fmt)} UTC")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    fig.tight_layout()
    return fig
