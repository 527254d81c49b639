"""The GRPO demo's HTML report (rollout_len.verl.html_report), opened in a real headless Chromium."""

from __future__ import annotations

import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rollout_len.bench.rollout import bootstrap_median_ci
from rollout_len.sched.timeline import Chunk, Timeline
from rollout_len.verl.demo_report import slope_ci
from rollout_len.verl.html_report import COLORS, write_report

STEPS, WORKERS, CAP = 4, 2, 256
CHARTS = {"saving-chart", "reward-chart", "predictor-chart", "length-chart", "throughput-chart", "staleness-chart"}
CHARTS |= {f"timeline-step{s}" for s in range(STEPS)}


def synthetic_summary() -> dict:
    """A summary.json as the demo writes it, from made-up steps (random lengths, timelines, savings)."""
    rng = random.Random(0)
    rows = []
    for step in range(STEPS):
        lengths = [[min(CAP, int(rng.lognormvariate(4, 0.8)) + 1) for _ in range(8)] for _ in range(8)]
        timelines = {}
        for name in ("length_aware", "fcfs"):
            chunks = [
                Chunk(w, 2.0 * i, 2.0 * i + 1.9, 1.8, rng.uniform(1, 8)) for w in range(WORKERS) for i in range(6)
            ]
            timelines[name] = Timeline(WORKERS, chunks, end_s=12.0).to_dict()
        saving, oracle = rng.uniform(-0.1, 0.2), rng.uniform(0.1, 0.25)
        tokens, fcfs_tokens = 6000 + 100 * step, 5000
        partial = {  # the default run's partial step, as partial_report.summary_row writes it
            "step": step,
            "rollout_time_s": 60.0,
            "fcfs_rollout_time_s": 80.0,
            "trained_tokens": tokens,
            "fcfs_tokens": fcfs_tokens,
            "tokens_per_s": tokens / 60.0,
            "fcfs_tokens_per_s": fcfs_tokens / 80.0,
            "staleness_tokens": {"0": tokens - 1000, "1": 1000} if step else {"0": tokens},
            "fresh_token_share": 1.0,
            "carried_samples": 0 if step == 0 else 12,
            "restarted": 0,
            "reward_mean": 0.1 + 0.03 * step,
            "lengths": lengths,
        }
        rows.append(
            {
                "step": step,
                "rollout_time_s": 10.0,
                "fcfs_rollout_time_s": 10.0 / (1 - saving),
                "saving": saving,
                "sim_saving": rng.uniform(0.0, 0.15),
                "oracle_saving": oracle,
                "oracle_gain_share": saving / oracle,
                "ratio_to_floor": 1.4,
                "reward_mean": 0.1 + 0.03 * step,
                "predictor_mae": None if step == 0 else 40.0 - 5 * step,
                "survival_mae": None if step == 0 else 45.0 - 2 * step,
                "lengths": lengths,
                "timelines": timelines,
                "partial": partial,
            }
        )
    savings = [r["saving"] for r in rows]
    partials = [r["partial"] for r in rows]
    slope, interval = slope_ci([r["step"] for r in rows], [r["reward_mean"] for r in rows])
    flat = np.array([x for r in rows for g in r["lengths"] for x in g])
    config = {"model": "smollm2-135m", "task": "arith", "num_workers": WORKERS, "slots_per_worker": 8, "steps": STEPS}
    config |= {"mode": "both", "max_staleness": 1, "on_stale": "restart"}
    config |= {"prompts_per_step": 8, "samples_per_prompt": 8, "max_new_tokens": CAP, "temperature": 0.7}
    return {
        "config": config,
        "median_saving": float(np.median(savings)),
        "saving_ci95": list(bootstrap_median_ci(savings)),
        "sim_saving": float(np.median([r["sim_saving"] for r in rows])),
        "oracle_saving": float(np.median([r["oracle_saving"] for r in rows])),
        "oracle_gain_share": float(np.median([r["oracle_gain_share"] for r in rows])),
        "capped_fraction": float((flat >= CAP).mean()),
        "partial_tokens_per_s": sum(p["trained_tokens"] for p in partials) / sum(p["rollout_time_s"] for p in partials),
        "fcfs_tokens_per_s": sum(p["fcfs_tokens"] for p in partials) / sum(p["fcfs_rollout_time_s"] for p in partials),
        "partial_throughput_ratio": 1.5,
        "partial_throughput_ratio_ci95": [1.4, 1.6],
        "fresh_token_share": 1.0,
        "staleness_tokens": {"0": 23600, "1": 3000},
        "reward_slope": slope,
        "reward_slope_ci95": interval,
        "steps": rows,
    }


def chromium() -> str:
    """Debian's Chromium; missing, the test fails (not skips): CI must render the report."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "Chromium is not installed, so the HTML report cannot be opened: run `make install` "
            "(it installs Debian's `chromium` package with apt-get; elsewhere, install Chromium and put it on PATH)"
        )
    return path


def browse(page: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *flags]
    return subprocess.run(command + [page.as_uri()], capture_output=True, text=True, timeout=180, check=True)


class Elements(HTMLParser):
    """Every element of a page as (tag, id, classes), and each figure's id with the tags inside it."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, str, set[str]]] = []
        self.figures: dict[str, list[str]] = {}
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs.get("id") or "", set((attrs.get("class") or "").split())))
        if tag == "figure":
            self._figure = attrs.get("id")
            self.figures[self._figure] = []
        elif self._figure is not None:
            self.figures[self._figure].append(tag)

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None

    def count(self, tag: str, *classes: str) -> int:
        return sum(t == tag and set(classes) <= c for t, _, c in self.elements)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    summary = synthetic_summary()
    return summary, write_report(summary, tmp_path_factory.mktemp("report") / "report.html")


def test_the_browser_builds_every_chart(report):
    summary, page = report
    dom = Elements()
    dom.feed(browse(page, "--dump-dom").stdout)
    assert CHARTS <= set(dom.figures)
    assert all("svg" in dom.figures[chart] for chart in CHARTS)
    rows = summary["steps"]
    assert dom.count("circle", "point", "live") == STEPS
    assert dom.count("rect", "point", "sim") == STEPS and dom.count("polygon", "point", "oracle") == STEPS
    assert dom.count("rect", "ci-band") == 1 and dom.count("line", "median") == 1
    assert dom.count("circle", "point", "reward") == STEPS and dom.count("line", "fit") == 1
    assert dom.count("circle", "point", "mae") == sum(r["predictor_mae"] is not None for r in rows)
    assert dom.count("circle", "point", "survival") == sum(r["survival_mae"] is not None for r in rows)
    assert dom.count("rect", "chunk") == sum(len(t["chunks"]) for r in rows for t in r["timelines"].values())
    assert dom.count("rect", "bar") >= 5
    assert dom.count("dl", "headline") == 1
    assert {dom.count("line", "mark", f"length-{m}") for m in ("median", "p90", "cap")} == {1}
    assert (
        dom.count("circle", "point", "partial-throughput") == dom.count("circle", "point", "fcfs-throughput") == STEPS
    )
    assert dom.count("rect", "bar", "staleness") == len(summary["staleness_tokens"])


def test_a_partial_mode_report_has_its_panels_and_no_synchronous_comparison(tmp_path):
    both = synthetic_summary()
    rows = [r["partial"] for r in both["steps"]]
    keep = ("reward_slope", "reward_slope_ci95", "capped_fraction", "partial_throughput_ratio_ci95")
    summary = {"config": both["config"] | {"mode": "partial"}, "steps": rows}
    summary |= {k: v for k, v in both.items() if k.startswith(("partial_", "fcfs_", "fresh", "staleness")) or k in keep}
    dom = Elements()
    dom.feed(write_report(summary, tmp_path / "report.html").read_text())
    assert set(dom.figures) == {"throughput-chart", "staleness-chart", "reward-chart", "length-chart"}
    assert dom.count("circle", "point", "partial-throughput") == STEPS


def test_the_charts_are_drawn_on_the_screenshot(report, tmp_path):
    _, page = report
    shot = tmp_path / "report.png"
    browse(page, f"--screenshot={shot}", "--window-size=1000,3000", "--hide-scrollbars")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # (H, W, 3)
    assert pixels.shape[:2] == (3000, 1000)
    ink = (pixels < 235).any(axis=2).mean()
    assert ink > 0.02, f"only {ink:.2%} of the screenshot is not white: the report did not render"
    for name in ("live", "sim", "oracle"):  # each series' colour shows up: the SVG marks were painted
        rgb = np.array([int(COLORS[name][i : i + 2], 16) for i in (1, 3, 5)])
        painted = (np.abs(pixels - rgb).sum(axis=2) < 12).sum()
        assert painted > 50, f"the {name} series ({COLORS[name]}) is not on the screenshot"
