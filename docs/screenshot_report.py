"""Screenshot an HTML report (``report.html``, single or combined) with headless Chromium.

Usage::

    python docs/screenshot_report.py outputs/audit/report.html docs/images/report_single.png --width 1400

The page is shot in a window as wide as ``--width`` and as tall as ``--height``; with no
``--height``, Chromium first loads the page at that width to measure its height, so the picture
is the whole page (and a warning says when the page is wider than the window: it would scroll
sideways). Headless Chromium needs the flags in :data:`FLAGS` on a machine
without a display or outside network: without the background-networking ones it tries to reach
Google's servers and the connections are refused.

Exit status: 0 when the PNG was written, 1 when Chromium failed or wrote nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The Chromium binary (Debian's ``chromium`` package).
CHROMIUM = "/usr/bin/chromium"
#: Flags for a headless run on a machine without a display, GPU, sandbox or outside network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
#: Tallest screenshot, in pixels: Chromium's own limit on a window is 16384.
MAX_HEIGHT = 16000


def chromium_command(
    chromium: str, page: Path, *, width: int, height: int, profile: Path, screenshot: Path | None
) -> list[str]:
    """The command line: a screenshot to ``screenshot``, or the DOM on stdout when it is ``None``."""
    action = [f"--screenshot={screenshot}"] if screenshot is not None else ["--dump-dom"]
    return [
        chromium,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        *action,
        page.resolve().as_uri(),
    ]


def page_size(page: Path, *, chromium: str, width: int, profile: Path) -> tuple[int, int]:
    """The page's full ``(width, height)`` in a window ``width`` pixels wide, measured by Chromium itself.

    A small script in a copy of the page (in ``profile``, so the page's folder is left alone; the
    reports are self-contained, so the copy looks the same) writes the document's scroll size into
    the title, which ``--dump-dom`` prints once the page has loaded. A scroll width above
    ``width`` means the page scrolls sideways.
    """
    probe = profile / "page.html"
    script = (
        "<script>addEventListener('load',()=>{const e=document.documentElement;"
        "document.title='SIZE='+e.scrollWidth+'x'+e.scrollHeight+'.'})</script>"
    )
    probe.write_text(page.read_text(encoding="utf-8") + script, encoding="utf-8")
    command = chromium_command(chromium, probe, width=width, height=1000, profile=profile, screenshot=None)
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    marker = dom.find("SIZE=")
    if marker < 0:
        raise RuntimeError("Chromium printed no page size")
    scroll_width, scroll_height = dom[marker + len("SIZE=") :].split(".", 1)[0].split("x")
    return int(scroll_width), int(scroll_height)


def screenshot(
    page: Path, out: Path, *, width: int = 1400, height: int | None = None, chromium: str = CHROMIUM
) -> Path:
    """Write a PNG of ``page`` as a browser window ``width`` pixels wide shows it.

    Args:
        page: The HTML file.
        out: The PNG to write (its folder is created).
        width: The window's width in CSS pixels.
        height: The window's height; ``None``: the page's full height (at most :data:`MAX_HEIGHT`).
        chromium: The Chromium binary.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: If ``page`` or ``chromium`` does not exist.
        RuntimeError: If Chromium fails or writes no picture.
    """
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such file")
    if shutil.which(chromium) is None:
        raise FileNotFoundError(f"{chromium}: not found (apt-get install -y chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh profile each run: no state from an earlier run, nothing left behind.
    with tempfile.TemporaryDirectory(prefix="screenshot-profile-") as profile:
        scroll_width, scroll_height = page_size(page, chromium=chromium, width=width, profile=Path(profile))
        if scroll_width > width:
            print(
                f"screenshot_report: warning: the page scrolls sideways ({scroll_width} > {width} px)", file=sys.stderr
            )
        if height is None:
            height = min(scroll_height, MAX_HEIGHT)
        out.unlink(missing_ok=True)
        command = chromium_command(chromium, page, width=width, height=height, profile=Path(profile), screenshot=out)
        finished = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if finished.returncode != 0 or not out.is_file():
        raise RuntimeError(f"Chromium failed (exit status {finished.returncode}): {finished.stderr.strip()[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description="Screenshot an HTML report with headless Chromium.")
    parser.add_argument("page", type=Path, help="the report, e.g. outputs/audit/report.html")
    parser.add_argument("out", type=Path, help="the PNG to write, e.g. docs/images/report_single.png")
    parser.add_argument("--width", type=int, default=1400, help="window width in pixels, e.g. 1400 (default)")
    parser.add_argument("--height", type=int, default=None, help="window height, e.g. 3000; default: the whole page")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"the Chromium binary, e.g. {CHROMIUM} (default)")
    args = parser.parse_args(argv)
    try:
        written = screenshot(args.page, args.out, width=args.width, height=args.height, chromium=args.chromium)
    except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as error:
        print(f"screenshot_report: {error}", file=sys.stderr)
        return 1
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
