"""The GRPO demo's dashboard: one self-contained HTML file (inline SVG, no script, no network).

    write_report(summary, Path("runs/grpo_demo/report.html"))   # summary: the demo's summary.json

Panels: the run's figures (median saving with its 95% interval, the simulator's oracle, the stall-free
throughput ratio with its interval, capped share, reward slope), saving per step (live, simulator
replay, oracle; the median and its interval as a band), the in-flight predictor's error per step,
trained tokens per second per step (partial vs fcfs sync) and the staleness histogram, reward per step
with its least-squares line, the response-length distribution, and each step's rollout timelines
(length_aware and fcfs, a row per worker, chunks shaded by decode batch). A run without partial steps
(--mode sync) has no throughput or staleness panel; one with only partial steps (--mode partial) has no
synchronous comparison. Every chart is a `<figure class="chart" id=...>` holding one
`<svg>`; data marks carry classes (`point live`, `bar`, `chunk`, ...) so a browser test can count them.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

__all__ = ["partial_rows", "render", "write_report"]

WIDTH = 760
MARGIN = {"left": 100, "right": 150, "top": 30, "bottom": 40}  # the right margin holds the legend
COLORS = {"live": "#1f77b4", "sim": "#ff7f0e", "oracle": "#2ca02c", "fcfs": "#7f7f7f", "band": "#c6dbef"}


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    span = hi - lo
    raw = span / count
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _limits(values: list[float], pad: float = 0.08) -> tuple[float, float]:
    """(low, high) around the values, padded; a single value gets a unit-wide range."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return lo - 0.5 if lo else -1.0, hi + 0.5 if hi else 1.0
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


class _Plot:
    """Data -> SVG pixels inside the margins; collects the elements of one chart."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float], height: int = 260):
        self.xlim, self.ylim, self.height = xlim, ylim, height
        self.parts: list[str] = []

    def x(self, v: float) -> float:
        (x0, x1), inner = self.xlim, WIDTH - MARGIN["left"] - MARGIN["right"]
        return MARGIN["left"] + (v - x0) / (x1 - x0) * inner

    def y(self, v: float) -> float:
        (y0, y1), inner = self.ylim, self.height - MARGIN["top"] - MARGIN["bottom"]
        return self.height - MARGIN["bottom"] - (v - y0) / (y1 - y0) * inner

    def add(self, element: str) -> None:
        self.parts.append(element)

    def axes(self, title: str, xlabel: str, ylabel: str, xticks: list[float], yticks: list[float], yfmt) -> None:
        """Frame, grid lines, tick labels, axis labels and the title."""
        left, right = MARGIN["left"], WIDTH - MARGIN["right"]
        top, bottom = MARGIN["top"], self.height - MARGIN["bottom"]
        for v in yticks:
            y = self.y(v)
            self.add(f'<line class="grid" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
            self.add(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{yfmt(v)}</text>')
        for v in xticks:
            x = self.x(v)
            self.add(f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{v:g}</text>')
        self.add(f'<rect class="frame" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/>')
        self.add(
            f'<text class="label" x="{(left + right) / 2}" y="{self.height - 6}" text-anchor="middle">{xlabel}</text>'
        )
        self.add(
            f'<text class="label" transform="translate(14 {(top + bottom) / 2}) rotate(-90)" '
            f'text-anchor="middle">{ylabel}</text>'
        )
        self.add(f'<text class="title" x="{left}" y="{top - 10}">{html.escape(title)}</text>')

    def series(self, xs: list[float], ys: list[float], cls: str, color: str) -> None:
        """A line through the points and a circle on each (class `point {cls}`)."""
        points = " ".join(f"{self.x(x):.1f},{self.y(y):.1f}" for x, y in zip(xs, ys))
        self.add(f'<polyline class="series" points="{points}" stroke="{color}"/>')
        for x, y in zip(xs, ys):
            self.add(f'<circle class="point {cls}" cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="4" fill="{color}"/>')

    def legend(self, entries: list[tuple[str, str]]) -> None:
        """(label, colour) entries down the right margin."""
        x = WIDTH - MARGIN["right"] + 12
        for i, (label, color) in enumerate(entries):
            y = MARGIN["top"] + 14 + 18 * i
            self.add(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>')
            self.add(f'<text class="tick" x="{x + 16}" y="{y}">{html.escape(label)}</text>')

    def svg(self) -> str:
        body = "\n".join(self.parts)
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{self.height}">\n{body}\n</svg>'


def _pct(v: float) -> str:
    return f"{v:+.0%}" if abs(v) >= 0.1 or v == 0 else f"{v:+.1%}"


def _figure(chart_id: str, plot: _Plot, caption: str) -> str:
    return f'<figure class="chart" id="{chart_id}">\n{plot.svg()}\n<figcaption>{caption}</figcaption>\n</figure>'


def _step_axis(rows: list[dict]) -> tuple[tuple[float, float], list[float]]:
    steps = [r["step"] for r in rows]
    return (min(steps) - 0.5, max(steps) + 0.5), [float(s) for s in steps]


def saving_chart(summary: dict) -> str:
    """Saving vs fcfs per step: live (circles), simulator replay (squares), oracle (diamonds); the
    median of the live savings as a line and its 95% bootstrap interval as a band."""
    rows = summary["steps"]
    low, high = summary["saving_ci95"]
    values = [v for r in rows for v in (r["saving"], r["sim_saving"], r["oracle_saving"])] + [low, high, 0.0]
    xlim, xticks = _step_axis(rows)
    plot = _Plot(xlim, _limits(values))
    yticks = _ticks(*plot.ylim)
    left, right = plot.x(xlim[0]), plot.x(xlim[1])
    plot.add(
        f'<rect class="ci-band" x="{left:.1f}" y="{plot.y(high):.1f}" width="{right - left:.1f}" '
        f'height="{max(plot.y(low) - plot.y(high), 1):.1f}" fill="{COLORS["band"]}"/>'
    )
    plot.axes("rollout saving vs fcfs per step", "GRPO step", "saving", xticks, yticks, _pct)
    for v, cls in ((0.0, "zero"), (summary["median_saving"], "median")):
        plot.add(f'<line class="{cls}" x1="{left:.1f}" x2="{right:.1f}" y1="{plot.y(v):.1f}" y2="{plot.y(v):.1f}"/>')
    for r in rows:  # the live point last, on top
        x = plot.x(r["step"])
        y = plot.y(r["sim_saving"])
        plot.add(
            f'<rect class="point sim" x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{COLORS["sim"]}"/>'
        )
        y = plot.y(r["oracle_saving"])
        diamond = f"{x:.1f},{y - 6:.1f} {x + 6:.1f},{y:.1f} {x:.1f},{y + 6:.1f} {x - 6:.1f},{y:.1f}"
        plot.add(f'<polygon class="point oracle" points="{diamond}" fill="{COLORS["oracle"]}"/>')
        y = plot.y(r["saving"])
        plot.add(f'<circle class="point live" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{COLORS["live"]}"/>')
    plot.legend(
        [
            ("live length_aware", COLORS["live"]),
            ("simulator replay", COLORS["sim"]),
            ("oracle (simulator)", COLORS["oracle"]),
            ("95% interval", COLORS["band"]),
        ]
    )
    caption = (
        f"Median live saving {_pct(summary['median_saving'])}, 95% bootstrap interval "
        f"[{_pct(low)}, {_pct(high)}] over {len(rows)} steps (line and band). Each step runs both policies on "
        "the same samples; the simulator replays that step's recorded lengths."
    )
    return _figure("saving-chart", plot, caption)


def reward_chart(summary: dict) -> str:
    """Reward mean per step with the least-squares line."""
    rows = summary["steps"]
    xlim, xticks = _step_axis(rows)
    rewards = [r["reward_mean"] for r in rows]
    slope = summary["reward_slope"]
    fit = [] if slope is None else [float(np.mean(rewards)) + slope * (x - float(np.mean(xticks))) for x in xlim]
    plot = _Plot(xlim, _limits(rewards + fit + [0.0]))
    plot.axes("reward mean per step", "GRPO step", "reward", xticks, _ticks(*plot.ylim), lambda v: f"{v:.2f}")
    if fit:
        (x0, x1), (y0, y1) = xlim, fit
        plot.add(
            f'<line class="fit" x1="{plot.x(x0):.1f}" x2="{plot.x(x1):.1f}" '
            f'y1="{plot.y(y0):.1f}" y2="{plot.y(y1):.1f}"/>'
        )
    plot.series(xticks, rewards, "reward", COLORS["live"])
    ci = summary["reward_slope_ci95"]
    caption = (
        "Fewer than two steps: no slope."
        if slope is None
        else f"Least-squares slope {slope:+.4f} per step, 95% bootstrap interval [{ci[0]:+.4f}, {ci[1]:+.4f}]."
    )
    return _figure("reward-chart", plot, caption)


def predictor_chart(summary: dict) -> str:
    """The in-flight predictor's mean absolute error (tokens) per step beside the survival baseline's
    on the same predictions (the median of L - t over finished samples past t); steps without one are
    left out."""
    rows = [r for r in summary["steps"] if r["predictor_mae"] is not None]
    if not rows:
        caption = "No step has a predictor error yet (the predictor is fitted after the first step)."
        return f'<figure class="chart" id="predictor-chart"><figcaption>{caption}</figcaption></figure>'
    xlim, xticks = _step_axis(rows)
    baseline = [r for r in rows if r.get("survival_mae") is not None]
    plot = _Plot(xlim, _limits([r["predictor_mae"] for r in rows] + [r["survival_mae"] for r in baseline] + [0.0]))
    plot.axes("predictor error in flight", "GRPO step", "MAE (tokens)", xticks, _ticks(*plot.ylim), lambda v: f"{v:g}")
    plot.series(xticks, [r["predictor_mae"] for r in rows], "mae", COLORS["sim"])
    steps = [r["step"] for r in baseline]
    plot.series(
        [x for x, r in zip(xticks, rows) if r["step"] in steps],
        [r["survival_mae"] for r in baseline],
        "survival",
        COLORS["fcfs"],
    )
    plot.legend([("PLP (length_aware)", COLORS["sim"]), ("survival baseline", COLORS["fcfs"])])
    caption = (
        "Mean absolute error of every in-flight remaining-length prediction (t > 0) made during the "
        "length_aware rollout, scored on the true lengths, beside the survival baseline's error on the "
        "same samples at the same t (the median remaining length of finished samples that ran past t)."
    )
    return _figure("predictor-chart", plot, caption)


def length_chart(summary: dict, bins: int = 32) -> str:
    """Histogram of every response length (tokens) of the run, with its median, p90 and the cap."""
    lengths = np.array([x for r in summary["steps"] for g in r["lengths"] for x in g], dtype=float)
    cap = summary["config"]["max_new_tokens"]
    counts, edges = np.histogram(lengths, bins=bins, range=(0, cap + 1))
    plot = _Plot((0.0, float(cap + 1)), (0.0, float(counts.max()) * 1.1))
    plot.axes(
        "response lengths", "tokens", "responses", _ticks(0, cap), _ticks(0, float(counts.max())), lambda v: f"{v:g}"
    )
    for count, a, b in zip(counts, edges[:-1], edges[1:]):
        if count:
            y = plot.y(count)
            plot.add(
                f'<rect class="bar" x="{plot.x(a):.1f}" y="{y:.1f}" width="{plot.x(b) - plot.x(a) - 1:.1f}" '
                f'height="{plot.y(0) - y:.1f}" fill="{COLORS["live"]}"/>'
            )
    median, p90 = float(np.median(lengths)), float(np.percentile(lengths, 90))
    marks = (("median", median, COLORS["sim"]), ("p90", p90, COLORS["oracle"]), ("cap", cap, COLORS["fcfs"]))
    for name, v, color in marks:
        x = plot.x(v)
        plot.add(
            f'<line class="mark length-{name}" x1="{x:.1f}" x2="{x:.1f}" y1="{plot.y(plot.ylim[1]):.1f}" '
            f'y2="{plot.y(0):.1f}" stroke="{color}"/>'
        )
    plot.legend([(f"{name} {v:.0f}", color) for name, v, color in marks])
    caption = (
        f"{lengths.size} responses; median {median:.0f}, p90 {p90:.0f} (p90 / median {p90 / median:.2f}), "
        f"{summary['capped_fraction']:.1%} at the cap of {cap} tokens."
    )
    return _figure("length-chart", plot, caption)


def timeline_chart(row: dict) -> str:
    """A step's two rollouts as Gantt rows, one per worker and policy, on one time axis; chunks shaded
    by their mean decode batch (darker: fuller)."""
    lanes = [(name, w) for name, t in row["timelines"].items() for w in range(t["num_workers"])]
    end = max(t["end_s"] for t in row["timelines"].values()) or 1.0
    peak = max((c[4] for t in row["timelines"].values() for c in t["chunks"]), default=1.0) or 1.0
    lane_h = 18
    plot = _Plot((0.0, end), (0.0, float(len(lanes))), height=MARGIN["top"] + MARGIN["bottom"] + lane_h * len(lanes))
    plot.axes(f"step {row['step']}: rollout timelines", "seconds", "", _ticks(0, end), [], str)
    for i, (name, worker) in enumerate(lanes):
        top = plot.y(len(lanes) - i)
        plot.add(
            f'<text class="tick" x="{MARGIN["left"] - 6}" y="{top + 13:.1f}" text-anchor="end">{name} w{worker}</text>'
        )
        for w, start, stop, _busy, batch in row["timelines"][name]["chunks"]:
            if w == worker:
                shade = 0.25 + 0.75 * batch / peak
                plot.add(
                    f'<rect class="chunk" x="{plot.x(start):.1f}" y="{top + 2:.1f}" '
                    f'width="{max(plot.x(stop) - plot.x(start), 0.5):.1f}" height="{lane_h - 4}" '
                    f'fill="{COLORS["live"]}" fill-opacity="{shade:.2f}"/>'
                )
        plot.add(
            f'<line class="end" x1="{plot.x(row["timelines"][name]["end_s"]):.1f}" '
            f'x2="{plot.x(row["timelines"][name]["end_s"]):.1f}" y1="{top:.1f}" y2="{top + lane_h:.1f}"/>'
        )
    times = {name: t["end_s"] for name, t in row["timelines"].items()}
    caption = "; ".join(f"{name} {s:.1f} s" for name, s in times.items()) + (
        f" (Coordinator step times). Saving {_pct(row['saving'])} live, {_pct(row['sim_saving'])} in the simulator."
    )
    return _figure(f"timeline-step{row['step']}", plot, caption)


def partial_rows(summary: dict) -> list[dict]:
    """The partial steps' rows (`partial_report.summary_row`): a partial-mode run's steps, the default
    run's rows' "partial", or none (a synchronous run)."""
    if summary["config"].get("mode") == "partial":
        return summary["steps"]
    return [r["partial"] for r in summary["steps"] if "partial" in r]


def _interval(values: list[float] | None, fmt) -> str:
    return "" if values is None else f" [{fmt(values[0])}, {fmt(values[1])}]"


def _headline(summary: dict) -> str:
    """The run's figures as a definition list."""
    slope = summary["reward_slope"]
    items = []
    if summary["config"].get("mode") != "partial":
        share = summary["oracle_gain_share"]
        items += [
            ("median saving vs fcfs", f"{_pct(summary['median_saving'])}{_interval(summary['saving_ci95'], _pct)}"),
            ("oracle saving (simulator)", _pct(summary["oracle_saving"])),
            ("length_aware saving (simulator)", _pct(summary["sim_saving"])),
            ("share of the oracle's saving", "-" if share is None else f"{share:.2f}"),
        ]
    ratio = summary["partial_throughput_ratio"]
    if ratio is None:
        items.append(("stall-free throughput / fcfs", summary["partial_throughput_note"]))
    else:
        interval = _interval(summary["partial_throughput_ratio_ci95"], lambda v: f"{v:.2f}")
        fresh = summary["fresh_token_share"]
        items += [
            ("stall-free trained tokens/s / fcfs sync", f"{ratio:.2f}{interval}"),
            ("trained tokens at staleness <= 1", "-" if fresh is None else f"{fresh:.1%}"),
        ]
    items += [
        ("capped responses", f"{summary['capped_fraction']:.1%}"),
        (
            "reward slope per step",
            "-" if slope is None else f"{slope:+.4f}{_interval(summary['reward_slope_ci95'], lambda v: f'{v:+.4f}')}",
        ),
    ]
    body = "\n".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return f'<dl class="headline">\n{body}\n</dl>'


def throughput_chart(summary: dict) -> str:
    """Trained tokens per second per step: the partial (stall-free) rollout and the fcfs synchronous one."""
    rows = partial_rows(summary)
    xlim, xticks = _step_axis(rows)
    partial, fcfs = [r["tokens_per_s"] for r in rows], [r["fcfs_tokens_per_s"] for r in rows]
    plot = _Plot(xlim, _limits(partial + fcfs + [0.0]))
    plot.axes("trained tokens per second", "GRPO step", "tokens / s", xticks, _ticks(*plot.ylim), lambda v: f"{v:g}")
    plot.series(xticks, fcfs, "fcfs-throughput", COLORS["fcfs"])
    plot.series(xticks, partial, "partial-throughput", COLORS["live"])
    plot.legend([("stall-free (partial)", COLORS["live"]), ("fcfs synchronous", COLORS["fcfs"])])
    lo, hi = summary["partial_throughput_ratio_ci95"]
    caption = (
        f"Trained tokens over rollout seconds, each step on the same weights. Over the run: "
        f"{summary['partial_tokens_per_s']:.1f} against {summary['fcfs_tokens_per_s']:.1f} tokens/s, "
        f"{summary['partial_throughput_ratio']:.2f} x fcfs, 95% bootstrap interval over steps [{lo:.2f}, {hi:.2f}]."
    )
    return _figure("throughput-chart", plot, caption)


def staleness_chart(summary: dict) -> str:
    """Histogram of the trained tokens by staleness (steps between the weights that made a token and the
    weights it trains)."""
    counts = {int(k): v for k, v in summary["staleness_tokens"].items()}
    top = max(counts) if counts else 0
    plot = _Plot((-0.5, top + 0.5), (0.0, max(counts.values(), default=1) * 1.1))
    plot.axes(
        "trained tokens by staleness",
        "staleness (steps)",
        "tokens",
        [float(k) for k in range(top + 1)],
        _ticks(*plot.ylim),
        lambda v: f"{v:g}",
    )
    for k, v in sorted(counts.items()):
        y = plot.y(v)
        plot.add(
            f'<rect class="bar staleness" x="{plot.x(k - 0.35):.1f}" y="{y:.1f}" '
            f'width="{plot.x(k + 0.35) - plot.x(k - 0.35):.1f}" height="{plot.y(0) - y:.1f}" fill="{COLORS["live"]}"/>'
        )
    fresh = summary["fresh_token_share"]
    caption = (
        f"{sum(counts.values())} trained tokens; {'-' if fresh is None else f'{fresh:.1%}'} at staleness <= 1 "
        f"(max_staleness {summary['config'].get('max_staleness')}, on_stale {summary['config'].get('on_stale')})."
    )
    return _figure("staleness-chart", plot, caption)


def _partial_table(rows: list[dict]) -> str:
    header = [
        "step",
        "partial s",
        "fcfs s",
        "tok/s",
        "fcfs tok/s",
        "stale <= 1",
        "carried",
        "restarted",
        "dropped",
        "reward",
    ]
    body = []
    for r in rows:
        cells = [
            str(r["step"]),
            f"{r['rollout_time_s']:.1f}",
            f"{r['fcfs_rollout_time_s']:.1f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['fcfs_tokens_per_s']:.1f}",
            f"{r['fresh_token_share']:.2f}",
            str(r["carried_samples"]),
            str(r["restarted"]),
            str(r.get("dropped_groups", "-")),
            f"{r['reward_mean']:.3f}",
        ]
        body.append(cells)
    return _table(header, body)


def _step_table(rows: list[dict]) -> str:
    header = [
        "step",
        "rollout s",
        "fcfs s",
        "saving",
        "sim",
        "oracle",
        "live / floor",
        "reward",
        "PLP MAE",
        "survival MAE",
    ]
    body = []
    for r in rows:
        mae = "-" if r["predictor_mae"] is None else f"{r['predictor_mae']:.1f}"
        survival = "-" if r.get("survival_mae") is None else f"{r['survival_mae']:.1f}"
        cells = [
            str(r["step"]),
            f"{r['rollout_time_s']:.1f}",
            f"{r['fcfs_rollout_time_s']:.1f}",
            _pct(r["saving"]),
            _pct(r["sim_saving"]),
            _pct(r["oracle_saving"]),
            f"{r['ratio_to_floor']:.2f}",
            f"{r['reward_mean']:.3f}",
            mae,
            survival,
        ]
        body.append(cells)
    return _table(header, body)


def _table(header: list[str], body: list[list[str]]) -> str:
    """An HTML table: the header row, then one row of cells per entry of `body`."""
    lines = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in body]
    return "\n".join(lines + ["</table>"])


STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 920px; }
.grid { stroke: #e5e5e5; } .frame { fill: none; stroke: #999; }
.tick { font-size: 11px; fill: #444; } .label { font-size: 12px; fill: #222; }
.title { font-size: 13px; font-weight: bold; fill: #222; } h2 { font-size: 16px; margin-top: 20px; }
.zero { stroke: #999; stroke-dasharray: 3 3; } .median { stroke: #1f77b4; stroke-width: 1.5; }
.fit { stroke: #d62728; stroke-dasharray: 5 3; } .series { fill: none; stroke-width: 1.5; }
.mark { stroke-width: 1.5; stroke-dasharray: 4 2; } .end { stroke: #d62728; }
dl.headline { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; }
dt { font-weight: bold; } table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
figure { margin: 24px 0; } figcaption { font-size: 12px; color: #555; max-width: 720px; }
"""


def render(summary: dict) -> str:
    """The report's HTML from a demo summary (summary.json's layout, of any --mode)."""
    c = summary["config"]
    title = f"GRPO demo: {c['model']}, {c['task']}, {c['num_workers']} workers x {c['slots_per_worker']} slots"
    partial = partial_rows(summary)
    tables, charts = [], []
    if c.get("mode") != "partial":
        tables += ["<h2>Synchronous rollouts: length_aware vs fcfs</h2>", _step_table(summary["steps"])]
        charts += [saving_chart(summary), predictor_chart(summary)]
    if partial:
        tables += ["<h2>Stall-free (partial) steps vs fcfs synchronous</h2>", _partial_table(partial)]
        charts += [throughput_chart(summary), staleness_chart(summary)]
    charts += [reward_chart(summary), length_chart(summary)]
    if c.get("mode") != "partial":
        charts += [timeline_chart(r) for r in summary["steps"]]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{c['steps']} steps of {c['prompts_per_step']} prompts x {c['samples_per_prompt']} samples, at most "
        f"{c['max_new_tokens']} new tokens, temperature {c['temperature']}.</p>",
        _headline(summary),
        *tables,
        *charts,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(summary: dict, path: Path) -> Path:
    """Write `render(summary)` to `path`; returns the path."""
    path.write_text(render(summary), encoding="utf-8")
    return path
