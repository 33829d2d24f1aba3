"""The evidence report as PDF: the same HTML printed by headless Chromium, because assessors print and stamp it.

No PDF library of our own: a real browser engine lays out the Chinese text, the inline SVG charts and the
print CSS (A4 landscape, the simulated-device banner on every page) exactly as the HTML shows them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "install Chromium (Debian/Ubuntu: apt-get install chromium fonts-wqy-microhei)"


class PdfUnavailable(RuntimeError):
    """No browser engine to print with, or it failed: the message says what to install or what went wrong."""


def find_chromium() -> str | None:
    """$CHROMIUM, else the first Chromium or Chrome on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def require_chromium() -> str:
    exe = find_chromium()
    if exe is None:
        raise PdfUnavailable(f"--format pdf needs a headless Chromium to print the HTML report and none was found "
                             f"(looked for $CHROMIUM, {', '.join(CANDIDATES)}): {INSTALL_HINT}")
    return exe


def html_to_pdf(page: str, out: Path, timeout: float = 120.0) -> None:
    """Print `page` (a self-contained HTML document) to `out` with headless Chromium."""
    exe = require_chromium()
    with tempfile.TemporaryDirectory(prefix="collector-pdf-") as tmp:
        src = Path(tmp) / "report.html"
        src.write_text(page, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-pdf-header-footer",
               f"--user-data-dir={Path(tmp) / 'profile'}", f"--print-to-pdf={target}", src.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PdfUnavailable(f"{exe} did not print the report within {timeout:.0f} s") from None
        except OSError as exc:
            raise PdfUnavailable(f"{exe} cannot run ({exc.strerror}): {INSTALL_HINT}") from None
        if proc.returncode != 0 or not target.exists() or target.stat().st_size == 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise PdfUnavailable(f"{exe} failed to print the report (exit {proc.returncode}): {' | '.join(tail)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), out)
