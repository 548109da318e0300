"""Build the docs site and take headless-Chromium screenshots of the home page and each plugin page.

Also checks that every <img> on those pages points to a file that exists in the built site.
Usage: .venv/bin/python docs/screenshots.py [OUT_DIR]   (default runs/screenshots; needs Debian's chromium)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index.html", "plugins/vit/index.html", "plugins/detr/index.html", "plugins/mamba/index.html",
         "plugins/inversion/index.html", "plugins/tradeoff/index.html", "plugins/perturb/index.html"]


def main(out: Path) -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    site = ROOT / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                   check=True, env=env)
    out.mkdir(parents=True, exist_ok=True)
    problems = 0
    for page in PAGES:
        html = site / page
        images = re.findall(r'<img[^>]+src="([^"]+)"', html.read_text())
        missing = [src for src in images if not src.startswith("data:") and not (html.parent / src).exists()]
        if missing:
            problems += 1
            print(f"{page}: missing images {missing}")
        name = page.replace("/index.html", "").replace("/", "-").replace(".html", "") or "index"
        shot = out / f"{name}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
                            "--window-size=1280,2400", f"--screenshot={shot}", html.as_uri()],
                           check=True, capture_output=True, timeout=120)
        print(f"{page}: {len(images)} images -> {shot}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "screenshots"))
