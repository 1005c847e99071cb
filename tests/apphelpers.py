"""Shared by the app tests (``test_app.py``, ``test_browser.py``): launch the Gradio app on a free
port, and build the positional inputs of the ``/unlearn`` endpoint with small, fast settings.

Not a test module (no ``test_`` prefix); pytest puts ``tests/`` on ``sys.path``, so the tests
``import apphelpers``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `import app` needs the repository root, whatever the cwd
    sys.path.insert(0, str(REPO_ROOT))

MODEL = "digits"
#: ESD settings that make a run take seconds on a CPU (pictures don't matter here).
FAST_ESD = {"iterations": 3, "ddim_steps": 4, "batch_size": 1}
#: comparison settings: 4 samples of the forgotten digit, 1 per retained digit (13 pairs), 3 DDIM steps.
FAST_COMPARE = {"seed": 0, "forget_samples": 4, "retain_samples": 1, "steps": 3}
#: how long one fast run may take, queue and first-run warm-up included (a loaded 2-core machine).
RUN_TIMEOUT_S = 120

#: outputs of /unlearn as gradio_client returns them (gr.State outputs are not part of the API):
#: status, loss plot, forget grid, retain grid, metrics, pair dropdown, slider, download, own-prompt grid.
OUT_STATUS, OUT_LOSS, OUT_FORGET, OUT_RETAIN, OUT_METRICS, OUT_PAIR, OUT_SLIDER, OUT_DOWNLOAD, OUT_PROMPTS = range(9)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app(**queue: Any) -> Iterator[str]:
    """The app as ``python app.py`` builds it, served on a free local port; yields its URL.
    ``queue``: arguments of ``demo.queue`` (e.g. max_size, default_concurrency_limit)."""
    import app

    demo = app.build_demo()
    demo.queue(**queue)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, css=app.CSS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def setting_values(method: str = "esd", model: str = MODEL, **overrides: Any) -> list[Any]:
    """One value per generated setting control (all methods, in the app's order), defaults except ``overrides``
    for ``method``'s fields."""
    from unlearning.ui import unlearn as ui

    controls = ui.setting_controls(model)
    known = {c.name for c in controls if c.method == method}
    if unknown := set(overrides) - known:
        raise KeyError(f"{method} has no setting(s) {sorted(unknown)}; it has {sorted(known)}")
    return [overrides.get(c.name, c.value) if c.method == method else c.value for c in controls]


def unlearn_args(*, model: str = MODEL, forget: Any = ("3",), anchor: str | None = None, method: str = "esd",
                 guidance: float | None = None, device: str = "auto", settings: dict[str, Any] | None = None,
                 preserve: Any = (), sampler: str = "ddim", prompts: str = "", **compare: Any) -> list[Any]:
    """Positional inputs of ``/unlearn``: model, forget list, anchor, method, seed, forget samples,
    retain samples, sampling steps, guidance, device, preserve list, sampler, own prompts, then every setting control. Fast by default."""
    from unlearning.ui import unlearn as ui

    c = {**FAST_COMPARE, **compare}
    fast = FAST_ESD if method == "esd" else {}
    values = setting_values(method, model, **{**fast, **(settings or {})})
    forget_list = list(forget) if isinstance(forget, (list, tuple)) else forget
    return [model, forget_list, anchor or ui.ERASE, method, c["seed"], c["forget_samples"], c["retain_samples"],
            c["steps"], guidance, device, list(preserve), sampler, prompts, *values]
