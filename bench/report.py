# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bench report: ``latest.json`` (everything), ``latest.md`` (a table per scenario, with ratios) and
``throughput.png`` (scenario 2: ours' throughput by connections against the ideal and the peers).

run.py calls ``write(out_dir, results, machine, command=..., repeat=..., quick=..., seconds=...)``. To
redraw the markdown and the chart from a saved JSON file:

    .venv/bin/python bench/report.py bench/results/latest.json [OUT_DIR]

Each result row is what ``Bench.record`` keeps: scenario, case, tool, seconds {median, min, max,
samples}, with ``mib_per_s`` when bytes were moved, plus the scenario's own fields. Within a case, the
row flagged ``reference: true`` (else the first row recorded) is the reference of the ratio column.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

TITLES = {
    "1": "Pull, unthrottled loopback",
    "2": "Pull, each connection capped (throughput by connections)",
    "3": "Memory of a pull",
    "4": "Push",
    "5": "Idempotent re-run through ansible-playbook",
    "6": "Fleet: one image onto many hosts",
}
NOTES = {
    "1": "1 GiB images of incompressible data (multi4: 4 x 256 MiB layers; single1g: one 1 GiB layer) over "
         "loopback. Ours and curl read from the local ECR endpoint (a Python server), skopeo and ctr from a "
         "Distribution registry (Go) holding the same bytes. Every tool's output is checked against the image's "
         "digests. containerd: multi4 over HTTP only. Reference: ours through module_utils (or ours into containerd).",
    "2": "single1g from the ECR endpoint pacing each connection at the cap. The ideal is min(P x cap, CPU "
         "ceiling), the CPU ceiling being ours on the uncapped endpoint at its best P. Reference: curl (one "
         "connection). skopeo and containerd are not in this scenario: they read from the registry, which "
         "cannot cap a connection.",
    "4": "Pushes from an OCI layout into a fresh repository per run, over HTTP: ours into the ECR endpoint, "
         "skopeo (--preserve-digests, empty blob-info cache) into the Distribution registry. The ceiling rows "
         "time building UploadLayerPart requests (base64, JSON, SigV4 payload hash) with no network; ours' "
         "'vs ideal/ceiling' compares it with the ceiling measured with as many threads as it has layers in "
         "flight. Reference: ours with 4 uploads at a time (1 thread for the ceiling rows).",
}
# fields of a row shown in its own columns, or not worth showing in the details column
_SHOWN = {"scenario", "case", "tool", "seconds", "mib_per_s", "bytes", "reference", "error", "ideal_mib_per_s",
          "ceiling_mib_per_s", "peak_rss_mib", "peak_rss_max_mib", "scenario_title"}
MIB = 1024 * 1024


# -- writing -------------------------------------------------------------------------------------------------

def write(out_dir: str, results: List[Dict[str, Any]], machine: Dict[str, Any], command: str, repeat: int,
          quick: bool, seconds: float) -> Dict[str, str]:
    """Write latest.json, latest.md and (when scenario 2 ran) throughput.png into ``out_dir``."""
    data = {"machine": machine, "command": command, "repeat": repeat, "quick": quick, "seconds": round(seconds, 1),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "results": results}
    return render(out_dir, data)


def render(out_dir: str, data: Dict[str, Any]) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "latest.json"), "markdown": os.path.join(out_dir, "latest.md")}
    _write_text(paths["json"], json.dumps(data, indent=2, sort_keys=True) + "\n")
    chart = os.path.join(out_dir, "throughput.png")
    drawn = draw_throughput(data["results"], chart)
    if drawn:
        paths["chart"] = chart
    elif os.path.exists(chart):
        os.unlink(chart)  # from an earlier run: it would not match this report
    _write_text(paths["markdown"], markdown(data, chart_name=os.path.basename(chart) if drawn else None))
    sys.stdout.write("report: " + ", ".join(paths.values()) + "\n")
    return paths


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


# -- the figures of a row ---------------------------------------------------------------------------------------

def metric(row: Dict[str, Any]) -> Optional[Tuple[str, float, float, float, bool]]:
    """(unit, median, low, high, higher_is_better) of the row's main figure; None for a failed row."""
    if "error" in row:
        return None
    if row.get("mib_per_s"):
        value = row["mib_per_s"]
        return "MiB/s", value["median"], value["min"], value["max"], True
    if row.get("peak_rss_mib") is not None:
        peak = row["peak_rss_mib"]
        return "MiB peak RSS", peak, peak, row.get("peak_rss_max_mib", peak), False
    value = row["seconds"]
    return "s", value["median"], value["min"], value["max"], False


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


def _figure(row: Dict[str, Any]) -> str:
    found = metric(row)
    if found is None:
        return f"FAILED: {row['error']}".replace("|", "/").replace("\n", " ")[:300]
    unit, median, low, high, dummy = found
    if row.get("peak_rss_mib") is not None and not row.get("mib_per_s"):
        return f"{_number(median)} {unit}" + (f" [max {_number(high)}]" if high != median else "")
    spread = f" [{_number(low)}-{_number(high)}]" if low != high else ""
    return f"{_number(median)}{spread} {unit}"


def _ratio(row: Dict[str, Any], reference: Optional[Dict[str, Any]], alone: bool) -> str:
    """Throughput and time: how many times the reference's speed (>1: faster). Other figures (memory):
    the row's value over the reference's (<1: less)."""
    if alone or reference is None:
        return "-"
    mine, theirs = metric(row), metric(reference)
    if mine is None or theirs is None or mine[0] != theirs[0] or not mine[1] or not theirs[1]:
        return "-"
    if mine[0] == "s":
        return f"{theirs[1] / mine[1]:.2f}x"
    return f"{mine[1] / theirs[1]:.2f}x"


def _bound(row: Dict[str, Any]) -> str:
    bound = row.get("ideal_mib_per_s") or row.get("ceiling_mib_per_s")
    if not bound or not row.get("mib_per_s"):
        return ""
    kind = "ideal" if row.get("ideal_mib_per_s") else "ceiling"
    return f"{row['mib_per_s']['median'] / bound:.2f} of {_number(bound)} ({kind})"


def _details(row: Dict[str, Any]) -> str:
    parts = []
    for key in sorted(row):
        value = row[key]
        if key in _SHOWN or isinstance(value, (dict, list)) or value is None or value is False:
            continue
        if isinstance(value, float):
            value = _number(value)
        parts.append(key if value is True else f"{key}={value}")
    return ", ".join(parts).replace("|", "/")


# -- markdown --------------------------------------------------------------------------------------------------

def _reference(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    flagged = [row for row in rows if row.get("reference") and "error" not in row]
    if flagged:
        return flagged[0]
    usable = [row for row in rows if "error" not in row]
    return usable[0] if usable else None


def machine_line(machine: Dict[str, Any]) -> str:
    return (f"{machine.get('cpus')} CPUs ({machine.get('cpu_model') or 'unknown model'}), {machine.get('memory_gib')} GiB "
            f"RAM, Linux {machine.get('kernel')}, Python {machine.get('python')}")


def markdown(data: Dict[str, Any], chart_name: Optional[str] = None) -> str:
    results = data["results"]
    lines = ["# ecrkit.images benchmark", "",
             f"- Machine: {machine_line(data['machine'])}",
             f"- Command: `{data['command']}`",
             f"- Each figure: the median of {data['repeat']} timed run(s), [min-max] when they differ."
             + (" **Quick run: small images, not figures to compare.**" if data.get("quick") else ""),
             f"- Written {data.get('written', '')}, in {data.get('seconds', 0) / 60:.1f} min.", "",
             "Ratios (`vs ref`): for throughput and time, how many times the case's reference tool's speed (above 1: "
             "faster than the reference); for memory, the row's peak RSS over the reference's. `vs ideal/ceiling`: "
             "the row's throughput as a fraction of the bound it is compared with.", ""]
    for scenario in dict.fromkeys(row["scenario"] for row in results):  # in order of first appearance
        rows = [row for row in results if row["scenario"] == scenario]
        title = next((row["scenario_title"] for row in rows if row.get("scenario_title")), TITLES.get(scenario, ""))
        lines += [f"## Scenario {scenario}{': ' + title if title else ''}", ""]
        if scenario in NOTES:
            lines += [NOTES[scenario], ""]
        bounds = any(row.get("ideal_mib_per_s") or row.get("ceiling_mib_per_s") for row in rows)
        header = ["case", "tool", "median [min-max]", "vs ref"] + (["vs ideal/ceiling"] if bounds else []) + ["details"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for dummy in header) + "|"]
        for case in dict.fromkeys(row["case"] for row in rows):
            members = [row for row in rows if row["case"] == case]
            reference = _reference(members)
            for row in members:
                cells = [case, row["tool"] + (" (ref)" if row is reference and len(members) > 1 else ""), _figure(row),
                         _ratio(row, reference, len(members) == 1)]
                if bounds:
                    cells.append(_bound(row))
                cells.append(_details(row))
                lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
        lines.append("")
        if scenario == "2" and chart_name:
            lines += [f"![throughput by connections]({chart_name})", ""]
    if not results:
        lines += ["No results.", ""]
    return "\n".join(lines)


# -- the chart -------------------------------------------------------------------------------------------------

def draw_throughput(results: List[Dict[str, Any]], path: str) -> bool:
    """Scenario 2: ours by connections (median, min-max bars), the ideal min(P x cap, CPU ceiling), the
    CPU ceiling and the peers as horizontal lines. False when scenario 2 has no figures of ours."""
    rows = [row for row in results if row["scenario"] == "2" and "error" not in row and row.get("mib_per_s")]
    ours = sorted((row for row in rows if row.get("ideal_mib_per_s") and not row.get("peer")),
                  key=lambda row: row["connections"])
    if not ours:
        return False
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    except ImportError:
        sys.stdout.write("report: matplotlib is not installed (pip install -r bench/requirements.txt); no chart\n")
        return False

    figure, axes = pyplot.subplots(figsize=(8, 5), dpi=120)
    xs = [row["connections"] for row in ours]
    medians = [row["mib_per_s"]["median"] for row in ours]
    errors = [[row["mib_per_s"]["median"] - row["mib_per_s"]["min"] for row in ours],
              [row["mib_per_s"]["max"] - row["mib_per_s"]["median"] for row in ours]]
    axes.errorbar(xs, medians, yerr=errors, marker="o", capsize=4, linewidth=2, label="ours (median, min-max)")

    cap = next((row.get("cap_mib_per_s") for row in ours if row.get("cap_mib_per_s")), None)
    ceiling = next((row.get("cpu_ceiling_mib_per_s") for row in ours if row.get("cpu_ceiling_mib_per_s")), None)
    if cap:
        # the ideal as a function of P, with its knee where P x cap meets the ceiling
        dense = [xs[0] * (xs[-1] / xs[0]) ** (step / 200) for step in range(201)] if xs[-1] > xs[0] else xs
        if ceiling and xs[0] < ceiling / cap < xs[-1]:
            dense = sorted(dense + [ceiling / cap])
        ideal = [min(p * cap, ceiling) if ceiling else p * cap for p in dense]
        axes.plot(dense, ideal, linestyle="--", color="grey",
                  label=f"ideal: min(P x {cap:.0f} MiB/s, CPU ceiling)" if ceiling else f"ideal: P x {cap:.0f} MiB/s")
    else:
        axes.plot(xs, [row["ideal_mib_per_s"] for row in ours], linestyle="--", color="grey", label="ideal")
    if ceiling:
        axes.axhline(ceiling, linestyle=":", color="black", linewidth=1,
                     label=f"CPU ceiling: ours uncapped, best P ({ceiling:.0f} MiB/s)")
    peers = [row for row in rows if row.get("peer")]
    for number, row in enumerate(peers):
        axes.axhline(row["mib_per_s"]["median"], linestyle="-.", linewidth=1.2, color=f"C{number + 1}",
                     label=f"{row['tool']} ({row['mib_per_s']['median']:.0f} MiB/s)")
    axes.set_xscale("log", base=2)
    axes.set_xticks(xs)
    axes.set_xticklabels([str(x) for x in xs])
    axes.set_xlabel("connections (P, max_concurrent_downloads)")
    axes.set_ylabel("MiB/s")
    axes.set_ylim(bottom=0)
    axes.set_title(ours[0]["case"])
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path + ".tmp", format="png")
    pyplot.close(figure)
    os.replace(path + ".tmp", path)
    return True


def main(argv: List[str]) -> int:
    if not argv or len(argv) > 2:
        sys.stderr.write(__doc__ + "\n")
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        data = json.load(handle)
    render(argv[1] if len(argv) > 1 else os.path.dirname(os.path.abspath(argv[0])), data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
