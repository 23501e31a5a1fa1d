"""Open the HTML report in a real browser (headless Chromium) and look at it as a reader does.

    .venv/bin/snakemake --report report.html
    .venv/bin/python bench/check_report.py report.html --out report_screenshots

Takes a screenshot of the landing page and of every result the report shows (each table page, each figure,
with its caption in the side panel), and checks what a reader would notice: a caption or the landing page
rendered as a reStructuredText error, a table page without a table, a figure shrunk below half its size (its
text then becomes unreadable). Prints one line per result and exits non-zero if anything failed.

Needs Debian's Chromium (`apt-get install chromium`) and Playwright's Python driver (`pip install playwright`;
no browser download: the driver starts /usr/bin/chromium). Not part of the pinned environment: the report is
checked by hand after a change to captions, figures or table pages.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

# Chromium on a machine without network: no sandbox (root), no background connections (refused here).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}  # a laptop screen
MIN_FIGURE_SCALE = 0.5  # a figure shown at less than half its pixel size has unreadable labels
VIEW_OF_MIME = {"image/png": "img", "image/svg+xml": "img", "image/jpeg": "img", "text/html": "html",
                "application/pdf": "pdf"}


def rst_errors(page) -> list[str]:
    """Texts of reStructuredText error blocks anywhere in the page (docutils renders them as system messages)."""
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.system-message, .system-messages'))"
        ".map(e => e.innerText.slice(0, 200))")


def check_result(page, path: str, entry: dict, shot: Path) -> dict:
    view = VIEW_OF_MIME.get(entry["mime_type"])
    row = {"result": path, "view": view or "download", "problems": ""}
    problems = []
    page.evaluate("(p) => app.showResultInfo(p)", path)
    if view is not None:
        # what the report's own "view" button does (ButtonViewManager)
        page.evaluate("([p, v]) => app.setView({content: v, contentPath: results[p].data_uri, resultPath: p})",
                      [path, view])
    page.wait_for_timeout(400)
    problems += [f"caption error: {text}" for text in rst_errors(page)]
    if view == "img":
        size = page.evaluate(
            "(p) => { const i = Array.from(document.images).find(im => im.src === results[p].data_uri);"
            " return i ? [i.naturalWidth, i.clientWidth] : null; }", path)
        if not size or not size[0]:
            problems.append("figure not displayed")
        else:
            scale = size[1] / size[0]
            row["scale"] = f"{scale:.2f}"
            if scale < MIN_FIGURE_SCALE:
                problems.append(f"figure shown at {scale:.2f} of its size ({size[0]} px wide)")
    elif view == "html":
        frame = next((f for f in page.frames if f.url.startswith("data:text/html")), None)
        if frame is None:
            problems.append("page not displayed")
        else:  # every HTML result is a table page, except findings (claims as a list)
            n_tables = frame.evaluate("() => document.querySelectorAll('table').length")
            row["tables"] = n_tables
            if n_tables == 0 and not path.endswith("findings.html"):
                problems.append("table page without a table")
    page.screenshot(path=str(shot))
    row["problems"] = "; ".join(problems)
    return row


def check_report(report: Path, out: Path, chromium: str) -> list[dict]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(report.resolve().as_uri())
        page.wait_for_function("() => typeof app !== 'undefined' && typeof results !== 'undefined'")
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "00_landing.png"), full_page=True)
        landing_problems = [f"landing page error: {t}" for t in rst_errors(page)]
        rows.append({"result": "(landing page)", "view": "landing", "problems": "; ".join(landing_problems)})
        results = page.evaluate("() => Object.fromEntries(Object.entries(results).map("
                                "([k, v]) => [k, {mime_type: v.mime_type}]))")
        for i, (path, entry) in enumerate(sorted(results.items()), start=1):
            name = f"{i:02d}_{Path(path).name.replace('~', '_')}.png"
            rows.append(check_result(page, path, entry, out / name))
        browser.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the report written by `snakemake --report report.html`")
    parser.add_argument("--out", type=Path, default=Path("report_screenshots"), help="folder for the screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"no report at {args.report}: write one with `snakemake --report {args.report}`")
    if not Path(args.chromium).exists():
        parser.error(f"no Chromium at {args.chromium} (apt-get install chromium, or pass --chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        parser.error("Playwright's Python driver is missing: pip install playwright (it uses the Chromium above)")
    rows = check_report(args.report, args.out, args.chromium)
    columns = ["result", "view", "scale", "tables", "problems"]
    with open(args.out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in columns} for r in rows)
    failed = [r for r in rows if r["problems"]]
    for r in rows:
        print(f"{'FAIL' if r['problems'] else 'ok  '} {r['view']:8s} {r.get('scale', ''):5s} {r['result']}"
              + (f"  -- {r['problems']}" if r["problems"] else ""))
    print(f"{len(rows)} views, {len(failed)} with problems; screenshots in {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
