"""The HTML page (audit.report.html, .svg, .view) on reports of the landed fixtures
built without a model: a passing audit, a failing law, a failing baseline
comparison, a merge, a mutation report and a trajectory.  Checks the page's
structure (points, error bars and markers per chart), that hostile strings are
escaped everywhere and still shown, that no attribute holds a URL, that a report
read back from JSON renders byte for byte as the fresh one, and the view-model's
numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_compare import LAYERS, TOL, make_report
from test_report import synthetic_report

from audit.checks import CHECKS
from audit.compare.baseline import compare_to_baseline
from audit.compare.layer_map import index_layer_map
from audit.compare.merge import compare_to_parents
from audit.errors import ReportError
from audit.report import view
from audit.report.html import DATA_ELEMENT_ID, render_page, write_page
from audit.report.json_report import read_json, write_json
from audit.report.mutations import MutantRow, MutationReport
from audit.report.mutations_json import write_mutations
from audit.report.sources import read_report_file, read_report_files
from audit.report.svg import nice_ticks
from audit.report.trajectory import Trajectory, TrajectoryStep
from audit.report.trajectory_json import write_trajectory

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "<img src=x onerror=alert(1)>"


# -- the fixtures --------------------------------------------------------------------

def passing_report():
    return make_report("tiny-pass")


def failing_baseline_report():
    """Raised by 0.01 from layer 3 on against its baseline: first moved layer 3."""
    return compare_to_baseline(make_report("tiny-drift", bump_at=3, bump=0.01, noise_seed=2),
                               make_report(), TOL, "baselines/tiny-drift.json")


def merge_report():
    a, b = make_report("a"), make_report("b", bump_at=1, bump=0.002)
    return compare_to_parents(make_report("tiny-merge", bump_at=5, bump=0.02),
                              {"a": a, "b": b}, index_layer_map(["a", "b"], LAYERS), TOL)


def mutation_report(label: str = "scale MLP ×8") -> MutationReport:
    def row(op, block, caught, checks, moved, expected, control=False, lbl=None):
        return MutantRow(op, lbl or f"{op} at block {block}", block, {"factor": 8.0}, control,
                         caught, checks, moved, expected, moved == expected and moved is not None,
                         3.1 + (block or 0) / 10, -0.95, 0.98,
                         ("pearson_r got worse",) if caught else ())

    return MutationReport("tiny-mut", "model_specs/tiny-mut.yaml", "/models/tiny", {
        "pearson_r": -0.97, "rho": 0.985, "loss": 3.05}, (
        row("noise", None, False, (), None, None, control=True, lbl="1% weight noise"),
        row("scale_mlp", 1, True, ("drift", "loss"), 2, 2, lbl=label),
        row("scale_mlp", 3, True, ("law", "drift"), 4, 4),
        row("zero", 1, True, ("loss",), 3, 2),
        row("zero", 3, False, (), None, 4)), 12.5)


def trajectory(steps=(0, 10, 20, 50, 100, 200)) -> Trajectory:
    out = []
    for i, step in enumerate(steps):
        decay = 0.99 - 0.01 * i
        out.append(TrajectoryStep(step, -0.2 - 0.13 * i, decay, 5.0 - 0.3 * i,
                                  tuple(0.9 * decay ** k for k in range(LAYERS + 1)),
                                  "pass" if i >= 3 else "fail"))
    return Trajectory("tiny-run", "tiny-run.yaml", "runs/tiny", "ab" * 32, tuple(out))


@pytest.fixture(scope="module")
def reports():
    return {"pass": passing_report(), "law": synthetic_report("tiny-law"),
            "baseline": failing_baseline_report(), "merge": merge_report()}


@pytest.fixture(scope="module")
def page(reports) -> str:
    return render_page(list(reports.values()), [mutation_report()], [trajectory()])


# -- a small DOM of the page ------------------------------------------------------------

VOID = {"meta", "link", "br", "hr", "img", "input", "area", "base", "col", "embed", "source",
        "track", "wbr"}


@dataclasses.dataclass
class Node:
    tag: str
    attrs: dict
    children: list
    text: str = ""

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs) -> list["Node"]:
        out = []
        for child in self.children:
            if ((tag is None or child.tag == tag) and (cls is None or cls in child.classes())
                    and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                out.append(child)
            out += child.find_all(tag, cls, **attrs)
        return out

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, [])
        self.stack = [self.root]
        self.all_attrs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, [])
        self.all_attrs += [(tag, k, v or "") for k, v in attrs]
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(Node("#text", {}, [], data))


def parse(text: str) -> TreeBuilder:
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder


def section(tree: TreeBuilder, anchor: str) -> Node:
    (node,) = tree.root.find_all("section", id=anchor)
    return node


def chart(node: Node, key: str, index: int = 0) -> Node:
    return node.find_all("svg", cls=f"chart-{key}")[index]


# -- structure ------------------------------------------------------------------------

def test_law_chart_has_a_point_and_an_error_bar_per_layer(page: str, reports) -> None:
    tree = parse(page)
    law = chart(section(tree, "spec-0"), "law")  # make_report: layers 0..8, 5 shards
    points = law.find_all("circle", cls="pt-measured")
    assert len(points) == LAYERS + 1 and len(law.find_all("path", cls="err")) == LAYERS + 1
    assert [p.attrs["data-x"] for p in points] == [str(i) for i in range(LAYERS + 1)]
    assert len(law.find_all("line", cls="fit")) == 1
    # tooltips carry the numbers of the report
    row = reports["pass"].layers[4]
    assert points[4].find_all("title")[0].all_text().startswith(
        f"layer 4: log10 PR {row.log10_pr:.5f} ± {row.log10_pr_se:.5f}")
    assert reports["pass"].verdict == "pass" and "pt-violation" not in str(law)


def test_violating_and_declared_layers_are_marked(page: str, reports) -> None:
    tree = parse(page)
    law = chart(section(tree, "spec-1"), "law")  # synthetic_report: layer 4 bumped, 6 layers
    assert len(law.find_all("circle", cls="pt-measured")) == 7
    (bad,) = law.find_all("circle", cls="pt-violation")
    assert bad.attrs["data-x"] == "4"
    assert len(law.find_all("g", cls="mark-violation")) == 1
    declared = render_page([synthetic_report("declared", expected=(4,))])
    law = chart(parse(declared).root, "law")
    assert len(law.find_all("g", cls="mark-expected")) == 1
    assert law.find_all("circle", cls="pt-expected")[0].attrs["data-x"] == "4"
    banner = section(parse(declared), "spec-0").find_all("div", cls="banner")[0].all_text()
    assert "fail as declared (xfail)" in banner and "expected: deviation from the fitted line" \
        in banner
    # the failing report's banner names its checks in words, with their messages
    banner = section(tree, "spec-1").find_all("div", cls="banner")[0].all_text()
    counts = view.counts(reports["law"])
    assert counts.failed == 2 and f"{counts.passed} checks pass" in " ".join(banner.split())
    assert "deviation from the fitted line" in banner and "step from the previous layer" in banner
    assert reports["law"].violations[0].message in banner


def test_baseline_comparison_overlays_and_drift_chart(page: str, reports) -> None:
    report = reports["baseline"]
    (cmp,) = report.comparisons
    assert report.verdict == "fail" and cmp.first_moved_layer == 3
    node = section(parse(page), "spec-2")
    law = chart(node, "law")
    assert len(law.find_all("polyline", cls="series-reference")) == 1  # the baseline's curve
    drift = chart(node, "drift")
    points = drift.find_all("circle", cls="pt")
    assert len(points) == LAYERS and len(drift.find_all("path", cls="err")) == LAYERS
    assert len(drift.find_all("path", cls="band-tolerance")) == 1
    (mark,) = drift.find_all("g", cls="mark-first-moved")
    (line,) = mark.find_all("line")
    third = next(p for p in points if p.attrs["data-x"] == "3")
    assert line.attrs["x1"] == third.attrs["cx"]
    assert "first moved 3" in mark.all_text()
    (row,) = node.find_all("tr", cls="first-moved")
    assert row.attrs["data-x"] == "3" and "← first moved" in row.all_text()


def test_merge_shows_the_parents_range(page: str, reports) -> None:
    (cmp,) = reports["merge"].comparisons
    node = section(parse(page), "spec-3")
    law = chart(node, "law")
    (band,) = law.find_all("path", cls="band-parents")
    assert band.attrs["d"].count("L") == 2 * LAYERS - 1  # LAYERS points on each side
    drift = chart(node, "drift")
    assert len(drift.find_all("circle", cls="pt")) == LAYERS
    assert cmp.first_moved_layer == 5 and len(drift.find_all("g", cls="mark-first-moved")) == 1
    assert "a:1, b:1" in node.all_text()


def test_loss_then_and_now(page: str, reports) -> None:
    report = reports["baseline"]
    (cmp,) = report.comparisons
    rows = view.loss_rows(report)
    assert [r.label for r in rows] == ["this checkpoint", "baseline"]
    assert rows[1].then == cmp.loss_then and rows[1].now == cmp.loss_now
    assert rows[1].change == pytest.approx(cmp.loss_now - cmp.loss_then)
    table = section(parse(page), "spec-2").find_all("table", cls="loss")[0].all_text()
    assert f"{report.loss.mean:.4f} ± {report.loss.stderr:.4f}" in table


def test_mutation_matrix_is_coloured_by_what_caught_each_mutant(page: str) -> None:
    node = section(parse(page), "mutations-0")
    (matrix,) = node.find_all("table", cls="matrix")
    head = [th.all_text() for th in matrix.find_all("thead")[0].find_all("th")]
    assert head == ["operator", "block 1", "block 3", "control"]
    rows = {tr.find_all("th")[0].all_text(): tr.find_all("td") for tr in
            matrix.find_all("tbody")[0].find_all("tr")}
    assert list(rows) == ["noise", "scale_mlp", "zero"]
    styles = {op: [sorted(c for c in td.classes() if c != "cell")[0] for td in tds]
              for op, tds in rows.items()}
    assert styles == {"noise": ["cell-none", "cell-none", "cell-control-ok"],
                      "scale_mlp": ["cell-drift", "cell-law", "cell-none"],
                      "zero": ["cell-loss", "cell-missed", "cell-none"]}
    assert rows["scale_mlp"][0].all_text().startswith("drift, loss")
    assert len(matrix.find_all("span", cls="loc")) == 2  # localised: scale_mlp at 1 and 3
    text = " ".join(node.all_text().split())
    assert "mutation score 0.75 (3 of 4 damaged mutants caught)" in text
    assert "localisation score 0.50" in text and "control: not flagged" in text


def test_trajectory_charts(page: str) -> None:
    node = section(parse(page), "trajectory-0")
    r = chart(node, "trajectory-pearson-r")
    assert [p.attrs["data-x"] for p in r.find_all("circle", cls="pt")] == [
        "0", "10", "20", "50", "100", "200"]
    assert len(chart(node, "trajectory-rho").find_all("circle", cls="pt")) == 6
    curves = chart(node, "trajectory-curves")
    assert len(curves.find_all("polyline", cls="series")) == view.TRAJECTORY_CURVES
    assert len(curves.find_all("circle", cls="pt")) == view.TRAJECTORY_CURVES * (LAYERS + 1)
    assert "steps shown: 0, 20, 50, 200" in node.all_text()


# -- escaping and self-containment -------------------------------------------------------

def hostile_reports():
    base = failing_baseline_report()
    bad = dataclasses.replace(
        base, name=f"evil{HOSTILE}", model={**base.model, "path": f"/models/{HOSTILE}"},
        corpus={**base.corpus, "name": HOSTILE}, warnings=(f"warn {HOSTILE}",),
        spec={**base.spec, "source": f"specs/{HOSTILE}.yaml"},
        comparisons=tuple(dataclasses.replace(c, reference=f"baselines/{HOSTILE}.json",
                                              notes=(HOSTILE,)) for c in base.comparisons))
    traj = dataclasses.replace(trajectory(), name=HOSTILE, run_dir=f"runs/{HOSTILE}")
    return [bad, merge_report()], [mutation_report(label=HOSTILE)], [traj]


def test_hostile_strings_are_escaped_everywhere_and_still_shown() -> None:
    reports, mutations, trajectories = hostile_reports()
    text = render_page(reports, mutations, trajectories)
    # no raw '<' from data anywhere: not in the markup, not in the embedded JSON
    assert "<img" not in text and HOSTILE not in text
    assert text.count("&lt;img src=x onerror=alert(1)&gt;") >= 8
    tree = parse(text)
    shown = tree.root.all_text()
    (data,) = tree.root.find_all("script", id=DATA_ELEMENT_ID)
    embedded = data.all_text()
    assert "<" not in embedded and "\\u003cimg src=x onerror=alert(1)\\u003e" in embedded
    visible = shown.replace(embedded, "")
    for where in (f"/models/{HOSTILE}", f"baselines/{HOSTILE}.json", f"warn {HOSTILE}",
                  f"runs/{HOSTILE}", f"evil{HOSTILE}", f"specs/{HOSTILE}.yaml"):
        assert where in visible, where
    assert not tree.root.find_all("img")
    # the attribute that holds a mutant's note (its tooltip) shows the label as text
    cell = next(td for td in tree.root.find_all("td", cls="cell-drift"))
    assert cell.attrs["title"].startswith(f"{HOSTILE}: caught by drift, loss")
    # the embedded JSON is the reports themselves
    assert json.loads(embedded)["reports"][0] == json.loads(json.dumps(reports[0].to_dict()))


URLISH = re.compile(r"^\s*(?:(?:https?|ftp|file|data|javascript|mailto|blob|ws|wss):|//)", re.I)


def test_no_external_url_in_any_attribute_and_one_file(page: str) -> None:
    tree = parse(page)
    assert tree.all_attrs
    for tag, name, value in tree.all_attrs:
        assert not URLISH.match(value), (tag, name, value)
        assert "://" not in value, (tag, name, value)
        if name in ("href", "src", "action", "xlink:href", "srcset", "poster", "data"):
            assert value.startswith("#"), (tag, name, value)
    assert not tree.root.find_all("link") and not tree.root.find_all("img")
    assert not [s for s in tree.root.find_all("script") if "src" in s.attrs]
    assert "url(" not in page and "@import" not in page
    hrefs = {a.attrs["href"] for a in tree.root.find_all("a")}
    ids = {n.attrs["id"] for n in tree.root.find_all() if "id" in n.attrs}
    assert hrefs and hrefs <= {f"#{i}" for i in ids}


def test_two_real_specs_make_a_page_of_a_few_hundred_kb() -> None:
    reports = [read_json(p) for p in sorted((ROOT / "model_specs" / "baselines").glob("*.json"))]
    assert len(reports) == 2
    text = render_page(reports)
    assert 20_000 < len(text.encode()) < 300_000
    assert len(parse(text).root.find_all("svg", cls="chart-law")) == 2


# -- round trips --------------------------------------------------------------------------

def test_a_report_read_back_renders_identically(reports, tmp_path: Path) -> None:
    fresh = [reports["baseline"], reports["merge"]]
    mutations, trajectories = [mutation_report()], [trajectory()]
    paths = [write_json(r, tmp_path / "r") for r in fresh]
    write_mutations(mutations[0], tmp_path)
    write_trajectory(trajectories[0], tmp_path / "t.trajectory.json")
    back = read_report_files([tmp_path / "t.trajectory.json", *paths,
                              tmp_path / f"{mutations[0].name}.mutations.json"])
    assert render_page(back.reports, back.mutations, back.trajectories) == render_page(
        fresh, mutations, trajectories)
    assert back.mutations[0] == mutations[0]
    out = write_page(tmp_path / "page" / "report.html", fresh)
    assert out.read_text(encoding="utf-8") == render_page(fresh)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left


def test_unreadable_files_are_report_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ReportError, match="cannot read report .*bad.json"):
        read_report_file(bad)
    data = mutation_report().to_dict()
    del data["mutants"][1]["block"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"bad.json lacks the field mutants\[1\]\.block"):
        read_report_file(bad)


# -- the view-model's numbers -----------------------------------------------------------

def test_view_model_error_bars_fitted_line_and_extent(reports) -> None:
    report = reports["pass"]
    c = view.law_chart(report)
    measured = c.series[0]
    for p, row in zip(measured.points, report.layers, strict=True):
        assert (p.x, p.y) == (row.index, row.log10_pr)
        assert (p.low, p.high) == (row.log10_pr - row.log10_pr_se, row.log10_pr + row.log10_pr_se)
    (fit,) = c.lines
    assert (fit.x0, fit.y0, fit.x1, fit.y1) == (1, report.layers[1].fitted, LAYERS,
                                                report.layers[LAYERS].fitted)
    assert fit.y1 - fit.y0 == pytest.approx(report.law.slope * (LAYERS - 1))
    lows = [p.low for p in measured.points]
    highs = [p.high for p in measured.points]
    span = max(highs) - min(lows)
    assert c.y_range == pytest.approx((min(lows) - 0.06 * span, max(highs) + 0.06 * span))
    assert c.x_range == (-0.5, LAYERS + 0.5)
    assert view.extent([2.0]) == (1.8, 2.2) and view.extent([math.nan]) == (0.0, 1.0)


def test_view_model_drift_band_counts_and_steps(reports) -> None:
    report = reports["baseline"]
    (cmp,) = report.comparisons
    assert view.drift_tolerance(report, cmp) == TOL.max_drift
    d = view.drift_chart(report, cmp)
    (band,) = d.bands
    assert band.low == (-TOL.max_drift, -TOL.max_drift) and band.high == (TOL.max_drift,) * 2
    assert [m.x for m in d.marks] == [3]
    assert [(p.low, p.high) for p in d.series[0].points] == [
        (r.drift - r.drift_se, r.drift + r.drift_se) for r in cmp.rows]
    counts = view.counts(report)
    assert counts.passed + counts.failed + counts.expected == len(report.checks)
    assert counts.failed == len(report.violations) > 0
    assert view.shown_steps([0, 10, 20, 50, 100, 200]) == (0, 20, 50, 200)
    assert view.shown_steps([5, 7]) == (5, 7)
    assert nice_ticks(0.0, 8.0, 8, integer=True) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert nice_ticks(-0.123, -0.061) == pytest.approx([-0.12, -0.1, -0.08])


def test_a_single_shard_report_has_no_error_bars() -> None:
    single = synthetic_report("one-shard", shards=1)
    svg = chart(parse(render_page([single])).root, "law")
    assert len(svg.find_all("circle", cls="pt-measured")) == 7
    assert svg.find_all("path", cls="err") == []
    assert all(np.isnan(row.log10_pr_se) for row in single.layers)


def test_an_empty_run_says_so() -> None:
    text = render_page([])
    assert "No spec was audited in this run." in text
    assert parse(text).root.find_all("script", id=DATA_ELEMENT_ID)


# -- the Markdown summary --------------------------------------------------------------

def _table(text: str) -> list[list[str]]:
    """The cells of each body row of the summary's table (split on unescaped |)."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in rows[1:]]


def test_markdown_summary_matches_the_report_numbers(reports, monkeypatch) -> None:
    from audit.report.markdown import COLUMNS, cell, markdown_summary

    shown = [reports["pass"], reports["baseline"], reports["merge"]]
    text = markdown_summary(shown, html_path="reports/equilaw.html")
    assert text.startswith("### equilaw: 1 of 3 specs pass\n")
    assert text.splitlines()[2] == "| " + " | ".join(COLUMNS) + " |"
    rows = _table(text)
    assert len(rows) == 3 and all(len(r) == len(COLUMNS) for r in rows)
    for cells, report in zip(rows, shown, strict=True):
        law = report.law
        assert cells[0] == report.name
        assert cells[1] == ("✅ pass" if report.verdict == "pass" else "❌ fail")
        assert cells[2] == f"{law.pearson_r:.4f} ± {law.pearson_r_se:.4f}"
        assert cells[3] == f"{law.rho:.5f} ± {law.rho_se:.5f}"
    assert rows[0][4] == f"{shown[0].loss.mean:.4f}" and rows[0][5] == "—" and rows[0][6] == "—"
    assert rows[0][7] == "—"  # no divergence measured
    (cmp,) = shown[1].comparisons
    assert rows[1][4] == f"baseline: {cmp.loss_then:.4f} → {cmp.loss_now:.4f}"
    assert rows[1][5] == "baseline: 3"
    first = shown[1].violations[0]
    assert rows[1][6].startswith(f"{CHECKS[first.check].title}: {cell(first.message)}; ")
    assert first.check == "baseline_rho" and "; drift from the baseline: layer " in rows[1][6]
    assert len(shown[1].violations) == 2 and " more" not in rows[1][6]
    import audit.report.markdown as md

    monkeypatch.setattr(md, "MAX_CHECKS", 1)
    assert _table(markdown_summary(shown))[1][6].endswith("; and 1 more")
    assert rows[2][4].startswith("parents: ") and rows[2][5] == "merge: 5"
    assert "reports/equilaw.html" in text


def test_markdown_cells_escape_what_data_holds() -> None:
    from audit.report.markdown import cell, markdown_summary

    assert cell("a|b <i>x</i> *y* [z](u)\nw") == (
        r"a\|b &lt;i&gt;x&lt;/i&gt; \*y\* \[z\]\(u\) w")
    (bad, *_), _, _ = hostile_reports()
    text = markdown_summary([bad])
    assert "<" not in text and "evil&lt;img src=x onerror=alert\\(1\\)&gt;" in text
    assert len(_table(text)[0]) == 8  # the | of |deviation| does not split the cell


# -- the command line and the plugin -------------------------------------------------------

def test_cli_renders_saved_reports(reports, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from audit.cli import main

    paths = [str(write_json(r, tmp_path)) for r in (reports["baseline"], reports["merge"])]
    mutations = write_mutations(mutation_report(), tmp_path)
    out, md = tmp_path / "page.html", tmp_path / "summary.md"
    assert main(["report", *paths, str(mutations), "-o", str(out),
                 "--markdown", str(md)]) == 0
    assert out.read_text() == render_page([reports["baseline"], reports["merge"]],
                                          [mutation_report()])
    assert len(_table(md.read_text())) == 2
    assert f"HTML report written: {out}" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "none.json"), "-o", str(out)]) == 2
    assert "cannot read report" in capsys.readouterr().err


def test_the_plugin_writes_the_page_and_summaries_when_items_fail(
        pytester: pytest.Pytester, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run on a model folder named like an HTML tag: the page shows the name
    as text, equals the page rendered from the JSON report it wrote, and the job
    summary is appended to, not overwritten."""
    import shutil

    import audit.plugin

    model = tmp_path / HOSTILE
    shutil.copytree(tiny_model_dir, model)
    spec = pytester.path / "tiny-html.yaml"
    spec.write_text(f"name: tiny-html\nmodel:\n  path: {json.dumps(str(model))}\nprobe:\n"
                    "  sequences: 16\n  length: 24\n  shards: 4\nlaw:\n  max_pearson_r: -0.99\n")
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--audit-spec", str(spec), "--audit-reports",
        str(tmp_path / "reports"), "--audit-html", "out/run.html", "--audit-markdown",
        "out/run.md", str(Path(audit.plugin.__file__).with_name("test_models.py")))
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # r > 0 on a random model
    result.stdout.fnmatch_lines(["HTML report written: *out/run.html",
                                 "Markdown summary written: *out/run.md"])
    page = (pytester.path / "out" / "run.html").read_text()
    report = read_json(tmp_path / "reports" / "tiny-html.json")
    assert report.verdict == "fail" and report.model["path"] == str(model)
    assert page == render_page([report])
    assert "<img" not in page and f"{model}".replace("<", "&lt;").replace(">", "&gt;") in page
    assert parse(page).root.find_all("p", cls="model")[0].all_text().startswith(str(model))
    rows = _table((pytester.path / "out" / "run.md").read_text())
    assert rows[0][:3] == ["tiny-html", "❌ fail",
                           f"{report.law.pearson_r:.4f} ± {report.law.pearson_r_se:.4f}"]
    job = summary.read_text()
    assert job.startswith("earlier step\n### equilaw: 0 of 1 specs pass")


def test_browser_tests_skip_outside_ci_and_fail_under_it(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    import test_html_browser as browser

    monkeypatch.setattr(browser, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=r"no-chromium is missing: install the "
                       r"browser: apt-get update && apt-get install -y chromium chromium-driver"):
        browser.require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the browser tests must run"):
        browser.require_browser()


def test_the_ci_workflow_keeps_the_page_with_the_uploaded_reports() -> None:
    import yaml
    from test_docs_ci import CI_DOC, _yaml_blocks

    text = CI_DOC.read_text()
    (workflow,) = [w for w in map(yaml.safe_load, _yaml_blocks(text))
                   if isinstance(w, dict) and "jobs" in w]
    (job,) = workflow["jobs"].values()
    (audit,) = [s for s in job["steps"] if "pytest audit/" in str(s.get("run", ""))]
    page = re.search(r"--audit-html (\S+)", audit["run"]).group(1)
    (upload,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith(
        "actions/upload-artifact")]
    assert Path(page).parent == Path(upload["with"]["path"])
    assert "GITHUB_STEP_SUMMARY" in text and "--audit-markdown" in text
