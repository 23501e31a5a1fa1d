"""The report's pages: every Markdown table as an HTML page, and the landing page of a run."""

import pandas as pd
import pytest
from docutils.core import publish_parts

from advneurons.report.findings import MASKING, VERDICTS, Claim, Section, write_sections_json
from advneurons.report.markdown import html_page, markdown_table, write_markdown
from advneurons.report.landing_page import (EXTENSIONS, landing_page, rst_text, verdict_counts,
                                           report_landing_page)


def test_markdown_table_becomes_an_html_table_with_its_title_and_notes(tmp_path):
    frame = pd.DataFrame({"model": ["vgg16-pat", "vgg16-vanilla"], "Clean": [97.5, 98.75], "PGD": [66.25, 0.0]})
    text = "# Accuracy (%)\n\nNotes with **bold** and `code`.\n\n- one\n- two\n\n" + markdown_table(frame) + "\n"
    md = tmp_path / "table.md"
    write_markdown(md, text)
    assert md.read_text() == text
    page = (tmp_path / "table.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>Accuracy (%)</title>" in page
    assert "<table>" in page and ">Clean</th>" in page and ">98.75</td>" in page and ">0.00</td>" in page
    assert "style=" not in page  # alignment comes from the stylesheet (numbers right-aligned)
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page and "<li>two</li>" in page
    assert "<style>" in page  # self-contained: the report embeds the file as it is


def test_html_page_escapes_markup_in_cells():
    page = html_page("# t\n\np < 0.05 for <name>~<hash>\n\n| a |\n|---|\n| x <script> |\n")
    body = page.split("</style>")[1]
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert "p &lt; 0.05 for &lt;name&gt;~&lt;hash&gt;" in body


def _findings(tmp_path):
    sections = [
        Section("SNS (TIP)", [Claim("SNS-sen beats PAT", True, "McNemar p = 0.01"),
                              Claim("SNS-rand is worse than PAT", None, "p = 0.4", outcome="within noise")]),
        Section("PSN (ECCV)", [Claim("top_1 units *matter*", False, "gap 0.2 < 0.5")]),
        Section("SNS (TIP) — resnet18", [Claim("SNS-sen beats PAT", False, "McNemar p = 0.001")]),
        Section("Defenses — vgg16", [Claim("MeanSparse raises the robustness of pat", None, "white-box only",
                                           outcome=MASKING, rule="the defense rule"),
                                     Claim("IG-Defense raises the robustness of pat", True, "all three gains",
                                           rule="the defense rule", extension=True)]),
    ]
    path = tmp_path / "findings.json"
    write_sections_json(sections, path)
    return path


def test_verdict_counts_per_section_and_in_total(tmp_path):
    counts = verdict_counts(_findings(tmp_path)).set_index("section")
    assert list(counts.columns) == list(VERDICTS)
    # sections per architecture share their topic's row
    assert counts.loc["SNS (TIP)"].to_dict() == {**dict.fromkeys(VERDICTS, 0), "supported": 1, "contradicted": 1,
                                                 "within noise": 1}
    assert counts.loc["PSN (ECCV)", "contradicted"] == 1 and len(counts) == 5
    # the masking verdict is counted under its own name, never as supported; the extension is counted apart
    assert counts.loc["Defenses", MASKING] == 1 and counts.loc["Defenses", "supported"] == 0
    assert counts.loc["all claims"].to_dict() == {**dict.fromkeys(VERDICTS, 0), "supported": 1, "contradicted": 2,
                                                  "within noise": 1, MASKING: 1}
    assert counts.loc[EXTENSIONS].to_dict() == {**dict.fromkeys(VERDICTS, 0), "supported": 1}


def _render(rst: str, link_targets: list[str]) -> dict:
    # what Snakemake's report does with the page: link targets for its results appended, then docutils
    targets = "\n".join(f".. _{name}: javascript:app.showResultInfo('{name}')" for name in link_targets)
    return publish_parts(rst + "\n\n" + targets + "\n", writer="html",
                         settings_overrides={"halt_level": 2, "report_level": 1})


def test_landing_page_renders_without_errors_and_shows_the_headline_numbers(tmp_path):
    robustness = tmp_path / "robustness.csv"
    pd.DataFrame({"model": ["vgg16-vanilla", "vgg16-pat"], "Clean": [98.89, 97.2], "L-inf PGD": [0.0, 68.33],
                  "AutoAttack": [0.0, 58.333]}).to_csv(robustness, index=False)
    links = ["robustness.html", "findings.html"]
    rst = landing_page(dataset="digits", seed=0, data_id="digits~1354d5be", models=["vgg16-vanilla", "vgg16-pat"],
                       defenses=["vgg16-alp"], robustness_csv=robustness, findings_json=_findings(tmp_path),
                       links=links)
    html = _render(rst, links)["html_body"]  # halt_level 2: any warning raises
    assert "system-message" not in html
    assert "<table" in html and "68.33" in html and "58.33" in html and "vgg16-pat" in html
    assert "5 claims" in html and "1 within noise" in html and "Verdicts by section" in html
    assert f"1 {MASKING}" in html and "counted apart: 1: 1 supported" in html
    assert "showResultInfo('robustness.html')" in html


def test_landing_page_link_to_an_item_missing_from_the_report_is_an_error(tmp_path):
    rst = landing_page(dataset="digits", seed=0, data_id="d~0", models=[], defenses=[], links=["robustness.html"])
    with pytest.raises(Exception):
        _render(rst, [])


def test_written_landing_page_is_fenced_from_jinja(tmp_path):
    from jinja2 import Environment

    out = tmp_path / "landing.rst"
    text = report_landing_page(out, dataset="digits", seed=0, data_id="d~0", models=["m{{x}}"], defenses=[])
    rendered = Environment(trim_blocks=True, lstrip_blocks=True).from_string(out.read_text()).render()
    assert rendered.strip() == text.strip() and "m{{x}}" in rendered


def test_rst_text_escapes_inline_markup():
    assert rst_text("a*b_c `d` |e|") == "a\\*b\\_c \\`d\\` \\|e\\|"
    assert "\n" not in rst_text("two\nlines")
