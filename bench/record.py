"""Where a bench's figures go: bench/results/<date>_<device>_<what>.json (and a .png beside it),
one rule for every bench, so recorded runs sort by date and name their machine."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def result_stem(out: Path, device: str, *what: str) -> Path:
    """out/<today>_<device, as a slug>_<what joined by _>; the folder is made."""
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-")
    return out / "_".join([dt.date.today().isoformat(), slug, *(w for w in what if w)])


def write_json(result: dict[str, Any], stem: Path) -> Path:
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
