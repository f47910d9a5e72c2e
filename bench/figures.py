"""The bench's results as data and as a picture: JSON in, PNG out.

:func:`results_to_json` turns one run's :class:`~bench.scenarios.Results` into plain
JSON (every measured row, the ratios of :data:`bench.report.RATIOS` against their
targets, the scale, purge and sender figures), so a run can be kept next to the
picture drawn from it and compared with later runs. :func:`draw` reads only that JSON:
a picture can be redrawn from a committed file without running anything
(``python -m bench.figures docs/bench.json docs/bench.png``).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import ratio_rows

if TYPE_CHECKING:
    from bench.scenarios import Options, Results

__all__ = ["results_to_json", "write_json", "read_json", "draw", "main"]


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return _finite(asdict(value))
    return value


def results_to_json(results: Results, options: Options) -> dict[str, Any]:
    """One run as plain JSON-ready data."""
    return _finite({
        "settings": asdict(results.settings) if results.settings else None,
        "tool": results.tool,
        "load": {"before": asdict(results.load_before) if results.load_before else None,
                 "after": asdict(results.load_after) if results.load_after else None},
        "options": {"duration": options.duration, "rounds": options.rounds,
                    "concurrencies": list(options.concurrencies),
                    "workers": options.workers, "threads": options.threads},
        "grid": [{"scenario": name, "concurrency": c, **asdict(result)}
                 for (name, c), result in results.grid.items()],
        "ratios": ratio_rows(results.grid, options.concurrencies),
        "skipped": results.skipped,
        "scale": [{"kind": kind, "stored": stored, "concurrency": c, **asdict(result)}
                  for (kind, stored, c), result in results.scale.items()],
        "purge": results.purge,
        "purge_paced": results.purge_paced,
        "sender": results.sender,
        "async_sender": results.async_sender,
        "celery": results.celery,
        "takeover": results.takeover,
    })


def write_json(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def draw(data: dict[str, Any], path: str | Path, *, title: str = "certified-http bench") -> None:
    """Throughput and p99 per scenario and concurrency, and the ratios against targets."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the bench runs on servers
    import matplotlib.pyplot as plt

    figure, (rps_axes, p99_axes, ratio_axes) = plt.subplots(1, 3, figsize=(17, 5.5))
    scenarios: dict[str, list[dict[str, Any]]] = {}
    for row in data.get("grid", []):
        scenarios.setdefault(row["scenario"], []).append(row)
    for name, rows in scenarios.items():
        rows.sort(key=lambda row: row["concurrency"])
        xs = [row["concurrency"] for row in rows]
        rps_axes.plot(xs, [row["rps"] for row in rows], marker="o", label=name)
        p99_axes.plot(xs, [row["p99_ms"] for row in rows], marker="o", label=name)
    concurrencies = sorted({row["concurrency"] for row in data.get("grid", [])})
    for axes, label in ((rps_axes, "requests/s"), (p99_axes, "p99 latency (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axes.minorticks_off()
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    rps_axes.set_title("throughput")
    p99_axes.set_title("p99 latency")
    p99_axes.set_yscale("log")
    rps_axes.legend(fontsize=7)
    ratios = data.get("ratios", [])
    labels = [f"{row['ratio']}\nc={row['concurrency']}" for row in ratios]
    values = [row["value"] if row["value"] is not None else 0.0 for row in ratios]
    colours = ["tab:green" if row.get("verdict") == "met" else "tab:red" for row in ratios]
    positions = list(range(len(ratios)))
    ratio_axes.barh(positions, values, color=colours)
    ratio_axes.scatter([row["target"] for row in ratios], positions, marker="|", s=300,
                       linewidths=2, color="black", label="target", zorder=3)
    ratio_axes.set_yticks(positions, labels, fontsize=7)
    ratio_axes.invert_yaxis()
    ratio_axes.set_title("ratios (green: target met)")
    ratio_axes.set_xlabel("throughput ratio")
    ratio_axes.grid(True, axis="x", alpha=0.3)
    if ratios:
        ratio_axes.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.figures RESULTS.json PICTURE.png``: redraw a kept run."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.figures RESULTS.json PICTURE.png", file=sys.stderr)
        return 2
    draw(read_json(args[0]), args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
