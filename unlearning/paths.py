"""Where the package finds its data: the embedded twins (``assets/``) and the committed benchmark results.

In a checkout (``python app.py``, ``bash tests/run.sh``) both are the repository's own folders. A package installed
with ``pip install .`` carries the twins inside it (``unlearning/assets``: pyproject.toml maps the repository's
``assets/`` there) and reads and writes benchmark results under the working directory's ``bench/results``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE.parent
IN_CHECKOUT = (_CHECKOUT / "app.py").is_file() and (_CHECKOUT / "assets").is_dir()

ASSETS = PACKAGE / "assets" if (PACKAGE / "assets").is_dir() else _CHECKOUT / "assets"
BENCH_RESULTS = _CHECKOUT / "bench" / "results" if IN_CHECKOUT else Path("bench") / "results"
