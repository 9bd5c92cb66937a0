"""The plan report: report.html and plan.png from real plans of a traced model, and `cogentc plan --report`."""

from __future__ import annotations

import base64
import re

import pytest

from cogent_compiler.cli import main
from cogent_compiler.cost import ComputeModel, LatencyModel, Link
from cogent_compiler.driver import CompileOptions, choose_plan, compile
from cogent_compiler.passes import single_tensor_cuts
from cogent_compiler.report import format_plan_table, report_rows, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONDITIONS = {"device target": "arm", "edge target": "cuda"}


def _model() -> LatencyModel:
    return LatencyModel(ComputeModel("device:arm", 0.5, source="flag"), ComputeModel("edge:cuda", 500.0, source="default estimate"),
                        Link(5e6, 0.010), edge_load=1.5)


def _html_rows(page: str) -> list[tuple[str, list[str]]]:
    """(tr class, cell texts) of the plan table's rows."""
    table = page.split("<h2>Predicted latency per plan</h2>", 1)[1].split("</table>", 1)[0]
    return [(cls, re.findall(r"<td[^>]*>(?:<code>)?(.*?)(?:</code>)?</td>", cells))
            for cls, cells in re.findall(r'<tr class="([a-z]+)">(.*?)</tr>', table)]


def test_rows_are_baselines_then_cuts_in_topological_order_then_the_chosen_plan(tiny_graph):
    report = choose_plan(tiny_graph, _model(), "single-cut")
    rows = report_rows(report)
    assert [r.name for r in rows] == ["device_only", "edge_only", *(f"cut@{t}" for t in single_tensor_cuts(tiny_graph)), "single_cut"]
    assert [r.role for r in rows[:2]] == ["baseline", "baseline"] and rows[-1].role == "chosen"
    assert [r for r in rows if r.chosen] == [rows[-1]] and rows[-1].predicted == report.chosen.predicted
    same = {r.name for r in rows if r.same_cut_as_chosen}
    assert same and all(set(r.cut) == set(report.chosen.cut) for r in rows if r.name in same)


def test_a_chosen_baseline_is_marked_in_place_and_min_cut_gets_its_own_row(tiny_graph):
    rows = report_rows(choose_plan(tiny_graph, _model(), "device"))
    assert [(r.name, r.chosen) for r in rows] == [("device_only", True), ("edge_only", False)]
    rows = report_rows(choose_plan(tiny_graph, _model(), "mincut"))
    assert [r.name for r in rows[:3]] == ["device_only", "edge_only", "single_cut"]
    assert rows[-1].name == "min_cut" and rows[-1].chosen and sum(r.chosen for r in rows) == 1


@pytest.mark.parametrize("planner", ["single-cut", "mincut"])
def test_report_shows_every_plan_with_its_numbers_the_chosen_one_and_the_conditions(tiny_graph, tmp_path, planner):
    report = choose_plan(tiny_graph, _model(), planner)
    path = write_report(report, tmp_path / "r", model_name="tiny_cnn", conditions=CONDITIONS)
    assert path == tmp_path / "r" / "report.html"
    page = path.read_text()
    expected = [(r.name, r.role, ", ".join(r.cut), *(f"{v:.3f}" for v in (r.predicted.device_ms, r.predicted.transfer_ms,
                                                                          r.predicted.edge_ms, r.predicted.total_ms)))
                for r in report_rows(report)]
    got = _html_rows(page)
    assert [tuple(cells[:7]) for _, cells in got] == expected
    assert [cls for cls, _ in got].count("chosen") == 1 and got[-1][0] == "chosen"
    assert "predicted" in page.lower() and "not measured" in page
    for needle in ("device target</th><td>arm", "edge target</th><td>cuda", "up 5 Mbit/s", "RTT 10 ms", "1.5x edge compute",
                   "0.5 GMAC/s", "(flag)", "(default estimate)"):
        assert needle in page, needle
    # self-contained: the chart is embedded, and the same bytes are written beside it as plan.png
    png = (tmp_path / "r" / "plan.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == png
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_the_same_report_gives_the_same_bytes_whatever_the_users_matplotlib_style(tiny_graph, tmp_path):
    import matplotlib

    report = choose_plan(tiny_graph, _model(), "single-cut")
    write_report(report, tmp_path / "a", conditions=CONDITIONS)
    with matplotlib.rc_context({"axes.facecolor": "black", "font.size": 20}):
        write_report(report, tmp_path / "b", conditions=CONDITIONS)
    for name in ("report.html", "plan.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    png = (tmp_path / "a" / "plan.png").read_bytes()
    assert b"Software" not in png and b"matplotlib" not in png.lower()


def test_compile_writes_the_report_into_the_bundle(tiny_graph, tmp_path):
    result = compile(tiny_graph, tmp_path / "out", CompileOptions(planner="device", backend="tvm", use_tunedb=False))
    page = (result.out_dir / "report.html").read_text()
    assert (result.out_dir / "plan.png").read_bytes().startswith(PNG_MAGIC)
    chosen = [cells for cls, cells in _html_rows(page) if cls == "chosen"]
    assert [c[0] for c in chosen] == ["device_only"]
    assert "device target</th><td>llvm" in page and "planner</th><td>device" in page


def test_cogentc_plan_prints_the_table_and_writes_the_report(capsys, tmp_path):
    argv = ["plan", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--bandwidth", "5mbit", "-q"]
    assert main([*argv, "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    page = (tmp_path / "rep" / "report.html").read_text()
    assert (tmp_path / "rep" / "plan.png").read_bytes().startswith(PNG_MAGIC)
    printed = [line.split() for line in out.splitlines()[1:] if line.split()[1:2] in (["baseline"], ["candidate"], ["chosen"])]
    assert printed[0][:2] == ["device_only", "baseline"] and printed[-1][-2:] == ["<-", "chosen"]
    assert [(cells[0], cells[1], *cells[3:7]) for _, cells in _html_rows(page)] == [(p[0], p[1], *p[3:7]) for p in printed]
    # at 5 Mbit/s a float32 activation crosses faster as float16 (--transfer-dtype auto): both views say so, row by row
    assert {p[2].split(":")[0] for p in printed} == {"native", "float16"}
    assert [p[2] != "native" for p in printed] == [" as float16" in cells[2] for _, cells in _html_rows(page)]
    assert "planner</th><td>single-cut" in page
    # the table alone is what format_plan_table gives; --json is unchanged by --report
    assert main([*argv, "--json", "--report", str(tmp_path / "rep2")]) == 0
    assert capsys.readouterr().out.lstrip().startswith("{")
    assert (tmp_path / "rep2" / "report.html").read_bytes() == (tmp_path / "rep" / "report.html").read_bytes()


def test_an_unwritable_report_folder_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["plan", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "-q", "--report", str(blocker)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cogentc: error:") and str(blocker) in err and len(err.splitlines()) == 1


def test_format_plan_table_marks_one_chosen_row(tiny_graph):
    table = format_plan_table(choose_plan(tiny_graph, _model(), "mincut"))
    assert table.count("<- chosen") == 1 and table.splitlines()[-1].startswith("min_cut")
