"""The plan report: ``report.html`` with ``plan.png`` beside it, and the same rows as a text table.

Every number here is a *prediction* of the latency model the planner used
(``cost.latency``), never a measurement (``cogentc bench`` measures).  The
rows are the baselines (device-only, edge-only and, for the min-cut planner,
the best single cut), every candidate cut in topological order, and the
chosen plan (its own row unless it is one of the baselines, as with
``--planner device``).  ``cogentc plan`` prints ``format_plan_table``; the
compile writes ``write_report`` into the bundle.

The files are deterministic: the same report gives the same bytes (no
timestamps, no matplotlib version stamp, matplotlib's default style whatever
the user's ``matplotlibrc`` says), so build systems can cache a bundle.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogent_compiler.cost.latency import Latency
from cogent_compiler.errors import BundleError
from cogent_compiler.policy.plan import PlanReport

__all__ = ["ReportRow", "format_plan_table", "report_rows", "write_plan_png", "write_report"]

#: Stack colours (matplotlib's tab10), and red for the chosen plan as in ``cogentc bench``'s chart.
_DEVICE, _TRANSFER, _EDGE, _CHOSEN = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


@dataclass(frozen=True)
class ReportRow:
    """One plan in the report.

    ``role`` is ``baseline``, ``candidate`` (a single-tensor cut) or
    ``chosen`` (the chosen plan as a row of its own); ``chosen`` marks the one
    row that is the chosen plan, and ``same_cut_as_chosen`` the others that
    cut at the same tensors (the same partition under another name).
    """

    name: str
    role: str
    cut: tuple[str, ...]
    predicted: Latency
    chosen: bool = False
    same_cut_as_chosen: bool = False
    #: sent tensors that cross in another dtype: name -> wire dtype (``Plan.encodings``)
    encodings: Mapping[str, str] = field(default_factory=dict)

    @property
    def wire(self) -> str:
        """How the cut crosses, in one word: ``native`` (each tensor in its own dtype), or ``float16:2/3`` (2 of 3 as float16)."""
        if not self.encodings:
            return "native"
        counts: dict[str, int] = {}
        for dt in self.encodings.values():
            counts[dt] = counts.get(dt, 0) + 1
        return ",".join(f"{dt}:{n}/{len(self.cut)}" for dt, n in sorted(counts.items()))


def report_rows(report: PlanReport) -> tuple[ReportRow, ...]:
    """Baselines (in the report's order), candidates (topological), then the chosen plan.

    The chosen plan gets a row of its own unless a baseline of the same name
    and cut already is it; exactly one row has ``chosen`` set.
    """
    chosen = report.chosen
    cut = frozenset(chosen.cut)
    rows = [ReportRow(name, "baseline", p.cut, p.predicted, encodings=p.encodings) for name, p in report.baselines.items()]
    rows += [ReportRow(p.name, "candidate", p.cut, p.predicted, encodings=p.encodings) for p in report.candidates]
    def is_chosen(r: ReportRow) -> bool:
        return r.role == "baseline" and r.name == chosen.name and frozenset(r.cut) == cut

    out = [dataclasses.replace(r, chosen=is_chosen(r), same_cut_as_chosen=frozenset(r.cut) == cut and not is_chosen(r)) for r in rows]
    if not any(r.chosen for r in out):
        out.append(ReportRow(chosen.name, "chosen", chosen.cut, chosen.predicted, chosen=True, encodings=chosen.encodings))
    return tuple(out)


def format_plan_table(report: PlanReport) -> str:
    """The rows as a fixed-width text table (what ``cogentc plan`` prints), without a trailing newline."""
    lines = [f"{'plan':<36} {'role':<9} {'sent as':<11} {'device ms':>10} {'transfer ms':>12} {'edge ms':>10} {'total ms':>10}"]
    for r in report_rows(report):
        lat = r.predicted
        mark = "  <- chosen" if r.chosen else "  (same cut as chosen)" if r.same_cut_as_chosen else ""
        lines.append(f"{_short(r.name, 36):<36} {r.role:<9} {r.wire:<11} {lat.device_ms:>10.3f} {lat.transfer_ms:>12.3f} {lat.edge_ms:>10.3f} "
                     f"{lat.total_ms:>10.3f}{mark}")
    return "\n".join(lines)


def write_plan_png(report: PlanReport, path: str | Path, *, model_name: str | None = None) -> Path:
    """A stacked bar per row (device compute, transfer, edge compute), the chosen one outlined in red.

    Bars are grouped as the rows are: baselines, candidate cuts in topological
    order, the chosen plan.  Returns ``path``.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report_rows(report)
    xs = _positions(rows)
    width_in = min(4.0 + 0.32 * len(rows), 40.0)
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(width_in, 4.8), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        dev = [r.predicted.device_ms for r in rows]
        tr = [r.predicted.transfer_ms for r in rows]
        edge = [r.predicted.edge_ms for r in rows]
        ax.bar(xs, dev, color=_DEVICE, label="device compute")
        ax.bar(xs, tr, bottom=dev, color=_TRANSFER, label="transfer")
        ax.bar(xs, edge, bottom=[d + t for d, t in zip(dev, tr)], color=_EDGE, label="edge compute")
        for x, r in zip(xs, rows):
            if r.chosen:
                ax.bar([x], [r.predicted.total_ms], fill=False, edgecolor=_CHOSEN, linewidth=2.5, label="chosen")
                ax.annotate(f"{r.predicted.total_ms:.3g} ms", (x, r.predicted.total_ms), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=8, color=_CHOSEN)
        ax.set_xticks(xs)
        ax.set_xticklabels([_short(r.name, 32) for r in rows], rotation=60, ha="right", fontsize=8)
        for label, r in zip(ax.get_xticklabels(), rows):
            if r.chosen:
                label.set_color(_CHOSEN)
                label.set_fontweight("bold")
            elif r.role == "baseline":
                label.set_fontstyle("italic")
        ax.set_ylabel("predicted latency, ms")
        ax.set_xlabel("baselines (italic) | candidate cuts, topological order | chosen (red)", fontsize=8)
        ax.set_title(f"{model_name or report.model}: predicted latency per plan (latency model, not measured)", fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        # no "Software" stamp: the same report gives the same bytes whatever matplotlib wrote it
        fig.savefig(path, format="png", metadata={"Software": None})
    return Path(path)


def write_report(report: PlanReport, out_dir: str | Path, *, model_name: str | None = None,
                 conditions: Mapping[str, Any] | None = None, accuracy: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/plan.png`` and a self-contained ``out_dir/report.html`` (the PNG embedded); return the HTML's path.

    ``model_name`` defaults to the report's model; ``conditions`` are shown
    first among the conditions (e.g. the targets and the planner), before the
    latency model's own figures from ``report.conditions``.  ``accuracy``
    (``AccuracyReport.to_json``) adds what pruning did to top-1.  Creates
    ``out_dir`` if needed; raises ``BundleError`` when it cannot be written.
    """
    out = Path(out_dir)
    name = model_name or report.model
    try:
        out.mkdir(parents=True, exist_ok=True)
        png = write_plan_png(report, out / "plan.png", model_name=name)
        page = _html(report, name, conditions or {}, png.read_bytes(), accuracy)
        path = out / "report.html"
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise BundleError(f"{out}: cannot write the plan report there ({e}); choose a folder you can write") from e
    return path


def _cut_text(cut: Sequence[str], encodings: Mapping[str, str]) -> str:
    """The cut's tensors, each with its wire dtype when it crosses in another than its own."""
    return ", ".join(f"{t} as {encodings[t]}" if t in encodings else t for t in cut)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _positions(rows: Sequence[ReportRow]) -> list[float]:
    """Bar positions with a gap between the role groups."""
    xs: list[float] = []
    x = 0.0
    for i, r in enumerate(rows):
        if i and r.role != rows[i - 1].role:
            x += 0.6
        xs.append(x)
        x += 1.0
    return xs


def _ms(v: float) -> str:
    return f"{v:.3f}"


def _describe_compute(d: Mapping[str, Any]) -> str:
    """A compute model's JSON in one line; a profile's fits are left out (they are in the profile file)."""
    if "gmacs_per_s" in d:
        return f"{d.get('name')}: {d['gmacs_per_s']:g} GMAC/s + {d.get('op_overhead_us', 0):g} µs per op ({d.get('source')})"
    machine = d.get("machine") or {}
    parts = [f"{d.get('name')}: {d.get('source')}", f"target {d.get('target')}", f"measured {d.get('date')}", f"{d.get('samples')} samples"]
    parts += [f"{k} {v}" for k, v in machine.items() if v is not None]
    return ", ".join(parts)


def _describe_link(d: Mapping[str, Any]) -> str:
    return (f"up {d.get('bandwidth_mbps', 0):g} Mbit/s, down {d.get('bandwidth_down_mbps', 0):g} Mbit/s, RTT {d.get('rtt_ms', 0):g} ms, "
            f"per message {d.get('per_message_ms', 0):g} ms ({d.get('source')})")


def _condition_rows(report: PlanReport, extra: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [(str(k), str(v)) for k, v in extra.items()]
    c = report.conditions
    known = {"device": "device compute model", "edge": "edge compute model", "link": "link", "edge_load": "edge load"}
    for key, label in known.items():
        if key not in c:
            continue
        v = c[key]
        if key == "link" and isinstance(v, Mapping):
            rows.append((label, _describe_link(v)))
        elif isinstance(v, Mapping):
            rows.append((label, _describe_compute(v)))
        elif key == "edge_load":
            rows.append((label, f"{v:g}x edge compute (1.0: an idle edge)"))
    rows += [(str(k), str(v)) for k, v in c.items() if k not in known]
    return rows


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen { background: #fde0e0; font-weight: bold; }
tr.baseline td.name { font-style: italic; }
.note { color: #666; }
img { max-width: 100%; }
""".strip()


def _pct(v: Any) -> str:
    return "not measured" if v is None else f"{100 * float(v):.2f} %"


def _accuracy_html(acc: Mapping[str, Any]) -> list[str]:
    """The pruning section: status, the three top-1 figures, MACs, and every attempt."""
    e = html.escape
    macs_b, macs_a = acc.get("macs_before") or 0, acc.get("macs_after") or 0
    rows = [("status", str(acc.get("status"))), ("data", str(acc.get("data") or "none")),
            ("budget (--max-accuracy-drop)", _pct(acc.get("max_accuracy_drop"))),
            ("top-1 before pruning", _pct(acc.get("top1_before"))), ("top-1 after pruning", _pct(acc.get("top1_pruned"))),
            ("top-1 after fine-tuning", _pct(acc.get("top1_finetuned"))), ("top-1 drop", _pct(acc.get("drop"))),
            ("MACs", f"{macs_b / 1e6:.1f} M before, {macs_a / 1e6:.1f} M after" + (f" ({macs_a / macs_b:.0%})" if macs_b else "")),
            ("groups pruned", str(len(acc.get("ratios") or {})))]
    if acc.get("finetune"):
        ft = acc["finetune"]
        rows.append(("fine-tuning", f"{ft.get('steps')} steps in {float(ft.get('seconds', 0)):.1f} s"))
    out = ["<h2>Pruning and accuracy</h2>", "<p class=\"note\">Top-1 measured on the data's validation split, "
           "with the eager PyTorch model; the compiled halves compute the same function.</p>", "<table>"]
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    out.append("</table>")
    if acc.get("attempts"):
        out += ["<table>", "<tr><th>attempt</th><th>MACs</th><th>top-1 pruned</th><th>top-1 fine-tuned</th><th>drop</th></tr>"]
        for i, a in enumerate(acc["attempts"], 1):
            out.append(f"<tr><td>{i}</td><td class=\"num\">{a.get('macs', 0) / 1e6:.1f} M</td><td class=\"num\">{_pct(a.get('top1_pruned'))}</td>"
                       f"<td class=\"num\">{_pct(a.get('top1_finetuned'))}</td><td class=\"num\">{_pct(a.get('drop'))}</td></tr>")
        out.append("</table>")
    return out


def _html(report: PlanReport, model_name: str, conditions: Mapping[str, Any], png: bytes,
          accuracy: Mapping[str, Any] | None = None) -> str:
    e = html.escape
    c = report.chosen
    lat = c.predicted
    speedups = ", ".join(f"{e(k)} {v:.2f}x" for k, v in report.speedups().items()) or "none"
    body = [
        f"<h1>{e(model_name)}: where to cut</h1>",
        "<p class=\"note\">Every latency on this page is <strong>predicted</strong> by the planner's latency model "
        "(conditions below), not measured; <code>cogentc bench</code> measures a bundle.</p>",
        f"<p>Chosen plan: <strong>{e(c.name)}</strong>, cut at <code>{e(_cut_text(c.cut, c.encodings))}</code>, predicted "
        f"<strong>{_ms(lat.total_ms)} ms</strong> (device {_ms(lat.device_ms)} + transfer {_ms(lat.transfer_ms)} + "
        f"edge {_ms(lat.edge_ms)} ms). Predicted speedup over: {speedups}.</p>",
        f"<img src=\"data:image/png;base64,{base64.b64encode(png).decode('ascii')}\" "
        f"alt=\"predicted latency per plan, stacked device compute, transfer and edge compute\">",
        "<h2>Predicted latency per plan</h2>",
        "<table>",
        "<tr><th>plan</th><th>role</th><th>cut at tensors</th><th>device ms</th><th>transfer ms</th>"
        "<th>edge ms</th><th>total ms</th><th></th></tr>",
    ]
    for r in report_rows(report):
        p = r.predicted
        cls = "chosen" if r.chosen else r.role
        mark = "chosen" if r.chosen else "same cut as chosen" if r.same_cut_as_chosen else ""
        body.append(
            f"<tr class=\"{cls}\"><td class=\"name\">{e(r.name)}</td><td>{e(r.role)}</td><td><code>{e(_cut_text(r.cut, r.encodings))}</code></td>"
            f"<td class=\"num\">{_ms(p.device_ms)}</td><td class=\"num\">{_ms(p.transfer_ms)}</td><td class=\"num\">{_ms(p.edge_ms)}</td>"
            f"<td class=\"num\">{_ms(p.total_ms)}</td><td>{mark}</td></tr>"
        )
    body.append("</table>")
    if accuracy:
        body += _accuracy_html(accuracy)
    body += ["<h2>Conditions</h2>", "<table>"]
    body += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _condition_rows(report, conditions)]
    body.append("</table>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>Cogent plan report: {e(model_name)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )
