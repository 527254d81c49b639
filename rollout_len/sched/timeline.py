"""What happened during a step: per-worker chunks (busy time, batch size), migrations; a Gantt PNG."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Chunk", "Timeline", "plot_timelines"]


@dataclass
class Chunk:
    worker_id: int
    start_s: float  # from the step's start
    end_s: float
    busy_s: float
    mean_batch: float
    score_s: float = 0.0  # prompt scoring, within busy_s
    step_log: list = field(default_factory=list)  # Report.step_log (not kept by to_dict)


@dataclass
class Timeline:
    num_workers: int
    chunks: list[Chunk] = field(default_factory=list)
    migrations: list[tuple[float, str, int, int]] = field(default_factory=list)  # (time, sample, from, to)
    deaths: list[tuple[float, int]] = field(default_factory=list)
    end_s: float = 0.0

    def busy_s(self, worker_id: int) -> float:
        return sum(c.busy_s for c in self.chunks if c.worker_id == worker_id)

    def idle_fraction(self) -> float:
        """Share of worker-time (workers x step time) not spent computing."""
        if self.end_s <= 0:
            return 0.0
        busy = sum(min(c.busy_s, c.end_s - c.start_s) for c in self.chunks)
        return max(0.0, 1.0 - busy / (self.num_workers * self.end_s))

    def to_dict(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "end_s": self.end_s,
            "idle_fraction": self.idle_fraction(),
            "chunks": [
                [c.worker_id, round(c.start_s, 4), round(c.end_s, 4), round(c.busy_s, 4), round(c.mean_batch, 2)]
                for c in self.chunks
            ],
            "migrations": [[round(t, 4), s, a, b] for t, s, a, b in self.migrations],
            "deaths": [[round(t, 4), w] for t, w in self.deaths],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Timeline:
        """The Timeline `to_dict()` wrote (times rounded to 0.1 ms), e.g. from verl's meta_info["rollout_len"]."""
        return cls(
            num_workers=int(data["num_workers"]),
            chunks=[
                Chunk(int(w), float(a), float(b), float(busy), float(batch)) for w, a, b, busy, batch in data["chunks"]
            ],
            migrations=[(float(t), str(s), int(a), int(b)) for t, s, a, b in data["migrations"]],
            deaths=[(float(t), int(w)) for t, w in data["deaths"]],
            end_s=float(data["end_s"]),
        )


def plot_timelines(timelines: dict[str, Timeline], path: str, max_workers: int = 16) -> None:
    """One Gantt panel per policy: a row per worker, bars coloured by decode batch size, migrations as arrows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(timelines)
    end = max(t.end_s for t in timelines.values()) or 1.0
    peak = max((c.mean_batch for t in timelines.values() for c in t.chunks), default=1.0) or 1.0
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 1.2 + 0.35 * min(max_workers, 16) * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        tl = timelines[name]
        shown = min(tl.num_workers, max_workers)
        for c in tl.chunks:
            if c.worker_id < shown:
                ax.barh(
                    c.worker_id,
                    c.end_s - c.start_s,
                    left=c.start_s,
                    height=0.8,
                    color=cmap(c.mean_batch / peak),
                    linewidth=0,
                )
        for t, _, a, b in tl.migrations:
            if a < shown and b < shown:
                ax.annotate("", xy=(t, b), xytext=(t, a), arrowprops={"arrowstyle": "->", "color": "red", "lw": 0.8})
        ax.axvline(tl.end_s, color="black", lw=0.8)
        ax.set_xlim(0, end * 1.02)
        ax.set_ylabel("worker")
        ax.set_title(
            f"{name}: {tl.end_s:.1f} s, idle {tl.idle_fraction():.0%}"
            + (f" (first {shown} of {tl.num_workers} workers)" if shown < tl.num_workers else ""),
            fontsize=9,
        )
    axes[-1, 0].set_xlabel("seconds from step start (colour: decode batch size; red: migrations)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
