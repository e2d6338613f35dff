"""Summaries of the benches: a line of the report, and for the replies bench percentiles, the text table, the JSON
file and the p99 plot."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

READER_CLASSES = ("origin", "follower", "late_joiner")


def report(line: str) -> None:
    """One line of a bench's report, on stdout (the logs go to stderr)."""
    sys.stdout.write(line + "\n")


SHORT_NAMES = {"genservice": "gs", "gateway-a": "gwA", "gateway-b": "gwB", "postgres": "pg", "bench": "bench"}


@dataclass
class Percentiles:
    count: int = 0
    p50: float = math.nan
    p99: float = math.nan
    max: float = math.nan

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        """Nearest-rank percentiles of the values (milliseconds)."""
        if not values:
            return cls()
        ordered = sorted(values)

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

        return cls(count=len(ordered), p50=rank(0.50), p99=rank(0.99), max=ordered[-1])

    def triple(self) -> str:
        if not self.count:
            return "-"
        return f"{_ms(self.p50)}/{_ms(self.p99)}/{_ms(self.max)}"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value / 1000:.1f}s"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


@dataclass
class LevelResult:
    """One run of the workload through the product at `streams` streams."""

    streams: int
    purpose: str  # "level" or "search"
    latency_ms: dict[str, Percentiles]
    exact: bool
    exact_streams: int
    failures: dict[str, int]
    examples: list[str]
    tokens_emitted: int
    wall_seconds: float
    cpu_percent: dict[str, float]
    cpu_seconds: dict[str, float]
    rss_mib: dict[str, float]
    cpu_us_per_token: float
    release_timeouts: int
    model_calls: dict[str, int]
    timed_out_streams: int
    # the most replies the model streamed at once during the level
    model_peak_streams: int = 0
    # late joiners: from opening to the first data of their backlog
    join_ms: Percentiles = field(default_factory=lambda: Percentiles.of([]))

    def passes(self, threshold_ms: float) -> bool:
        return self.exact and all(self.latency_ms[name].p99 < threshold_ms for name in READER_CLASSES)


@dataclass
class BaselineResult:
    """The bare client reading the model server directly: the bench's own overhead."""

    streams: int
    latency_ms: Percentiles
    exact: bool
    failures: dict[str, int]
    wall_seconds: float
    bench_cpu_percent: float


@dataclass
class ThroughputResult:
    """One unpaced stream: characters per second as the reader saw them."""

    reader: str
    tokens: int
    chars_received: int
    exact: bool
    seconds: float
    chars_per_second: float
    model_chars_per_second: float
    problems: list[str] = field(default_factory=list)


def _short(name: str) -> str:
    for prefix, short in SHORT_NAMES.items():
        if name.startswith(prefix):
            return short + name[len(prefix) :]
    return name


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = [" | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"


_LEVEL_HEADERS = (
    "streams",
    "origin p50/p99/max ms",
    "follower p50/p99/max",
    "late joiner p50/p99/max",
    "late join p50/p99/max",
    "exact?",
)


def _level_cells(level: LevelResult) -> list[str]:
    exact = "yes" if level.exact else f"NO {level.exact_streams}/{level.streams}"
    streams = f"{level.streams}" + ("*" if level.purpose == "search" else "")
    return [streams, *(level.latency_ms[name].triple() for name in READER_CLASSES), level.join_ms.triple(), exact]


def level_table(levels: Sequence[LevelResult], watched: Sequence[str]) -> str:
    headers = [
        *_LEVEL_HEADERS,
        *(f"{_short(name)} CPU%" for name in watched),
        "RSS MiB " + "/".join(_short(name) for name in watched),
        "CPU µs/token",
    ]
    rows = []
    for level in sorted(levels, key=lambda each: each.streams):
        rows.append(
            [
                *_level_cells(level),
                *(f"{level.cpu_percent.get(name, math.nan):.0f}" for name in watched),
                "/".join(f"{level.rss_mib.get(name, math.nan):.0f}" for name in watched),
                f"{level.cpu_us_per_token:.0f}",
            ]
        )
    return _table(headers, rows)


def comparison_table(systems: Sequence[tuple[str, Sequence[LevelResult], Sequence[str]]]) -> str:
    """Every level of every system (name, levels, its processes) side by side; CPU% sums that of its processes."""
    headers = ["system", *_LEVEL_HEADERS, "CPU%", "CPU µs/token"]
    rows = []
    for order, (system, levels, processes) in enumerate(systems):
        for level in levels:
            cpu = sum(level.cpu_percent.get(name, math.nan) for name in processes)
            cells = [system, *_level_cells(level), f"{cpu:.0f}", f"{level.cpu_us_per_token:.0f}"]
            rows.append(((level.streams, order), cells))
    return _table(headers, [cells for _, cells in sorted(rows, key=lambda each: each[0])])


def baseline_table(baselines: Sequence[BaselineResult]) -> str:
    headers = ["streams", "bare client p50/p99/max ms", "exact?", "bench CPU%"]
    rows = [
        [f"{each.streams}", each.latency_ms.triple(), "yes" if each.exact else "NO", f"{each.bench_cpu_percent:.0f}"]
        for each in sorted(baselines, key=lambda each: each.streams)
    ]
    return _table(headers, rows)


def throughput_lines(results: Sequence[ThroughputResult]) -> str:
    lines = []
    for each in results:
        lines.append(
            f"unpaced, {each.tokens} tokens, {each.reader}: {each.chars_per_second:,.0f} chars/s "
            f"({each.chars_received} chars in {each.seconds:.2f} s; the model wrote {each.model_chars_per_second:,.0f}"
            f" chars/s) exact={'yes' if each.exact else 'NO'}"
            + (f" problems: {'; '.join(each.problems[:3])}" if each.problems else "")
            + "\n"
        )
    return "".join(lines)


def failures_text(levels: Sequence[LevelResult]) -> str:
    lines = []
    for level in sorted(levels, key=lambda each: each.streams):
        if level.failures:
            reasons = ", ".join(f"{reason} x{count}" for reason, count in sorted(level.failures.items()))
            lines.append(f"{level.streams} streams: {reasons}\n")
            lines.extend(f"    e.g. {example}\n" for example in level.examples[:3])
    return "".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 4)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    def convert(value: Any) -> Any:
        if isinstance(value, LevelResult | BaselineResult | ThroughputResult | Percentiles):
            return asdict(value)
        if isinstance(value, Mapping):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [convert(item) for item in value]
        return value

    path.write_text(json.dumps(_plain(convert(document)), indent=2) + "\n")


def plot(path: Path, levels: Sequence[LevelResult], baselines: Sequence[BaselineResult], threshold_ms: float) -> bool:
    """p99 against streams per reader class (and the bare client) as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write(
            f"matplotlib is not installed: no plot at {path} (pip install matplotlib into the venv to get one)\n"
        )
        return False
    ordered = sorted(levels, key=lambda each: each.streams)
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    labels = {
        "origin": "origin (POST, gateway A)",
        "follower": "live follower (gateway B)",
        "late_joiner": "late joiner",
    }
    for name, marker in zip(READER_CLASSES, ("o", "s", "^"), strict=True):
        points = [(each.streams, each.latency_ms[name].p99) for each in ordered if each.latency_ms[name].count]
        if points:
            axes.plot(*zip(*points, strict=True), marker=marker, label=labels[name])
        inexact = [(each.streams, each.latency_ms[name].p99) for each in ordered if not each.exact]
        inexact = [point for point in inexact if not math.isnan(point[1])]
        if inexact:
            xs, ys = [x for x, _ in inexact], [y for _, y in inexact]
            axes.scatter(xs, ys, marker="x", color="red", s=80, zorder=5)
    bare = [(each.streams, each.latency_ms.p99) for each in sorted(baselines, key=lambda each: each.streams)]
    bare = [point for point in bare if not math.isnan(point[1])]
    if bare:
        axes.plot(*zip(*bare, strict=True), marker=".", linestyle="--", color="gray", label="bare client (baseline)")
    axes.axhline(threshold_ms, color="black", linewidth=0.8, linestyle=":", label=f"{threshold_ms:g} ms")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("concurrent streams (500 tokens at 50 tokens/s each)")
    axes.set_ylabel("p99 per-token latency (ms)")
    axes.set_title("Reply latency by reader (red x: text not exact)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
