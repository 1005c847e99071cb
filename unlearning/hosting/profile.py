"""Profiles: what one running instance of the app (or the CLI) allows.

Two kinds:

- **local** (no profile file in force): the user's own machine. Every embedded model, hub id and
  local folder, every method, the generous local limits written beside each field below. This is
  what ``python app.py``, ``bash scripts/start.sh`` and ``python -m unlearning`` use by default.
- **hosted**: a YAML profile file is in force. That happens when a file is named (``--profile
  PATH`` of app.py and the CLI, or the environment variable ``UNLEARNING_CONFIG=PATH``), or when the
  app runs on a Hugging Face Space (the Space sets ``SPACE_ID``), which reads the repository's
  ``spaces_config.yaml``. A hosted profile never lets a visitor touch the server's file system
  (``allow_local_models`` is false unless the file says otherwise) and keeps each visitor's runs to
  that visitor (see ``unlearning.ui.runs``).

``UNLEARNING_CONFIG=none`` forces the local profile, even on a Space.

Every key is checked at load: a key the profile does not know is an error naming the full dotted
key (``limits.max_step``) and the valid keys at that level, a value of the wrong type or a limit
that is not a positive integer is an error naming the key and what was expected. Errors are
:class:`~unlearning.errors.InputError` and start with the file's name.

Model and method *names* are only checked to be non-empty strings here; the registries that know
the real names check them (this module imports nothing from the rest of the package but errors,
so anything may import it).

YAML layout (all keys optional)::

    models: [digits, shapes-sd]   # model ids allowed (local default: all, plus hub ids and folders)
    methods: all                  # or a list of method names
    default_method: uce           # the method selected when the app opens (local default: the app's)
    limits: {max_iterations: 5000, max_inference_steps: 200, max_samples: 256,
             max_concepts: 16, max_image_pixels: 1048576, max_upload_bytes: 10485760}
    queue: {max_size: 32, concurrency: 1}
    runs: {dir: /tmp/unlearning-lab/runs, keep: 50, max_bytes: 2147483648}
    gpu_duration: {uce: 0.05}     # seconds per iteration, for ZeroGPU
    zerogpu: {max_duration: 120, margin: 1.5, overhead_s: 10, sample_step_s: 0.05, default_step_s: 0.5}
    hub_export: false
    allow_local_models: false     # may a visitor load a folder of the server's disk as a model [local: true]
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import InputError

logger = logging.getLogger(__name__)

ENV_VAR = "UNLEARNING_CONFIG"
SPACE_ENV_VAR = "SPACE_ID"  # set by Hugging Face on every Space
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "spaces_config.yaml"  # the Space's profile
NO_FILE = "none"  # UNLEARNING_CONFIG=none: read no file, use the local profile
ALL_METHODS = "all"  # YAML value of `methods` that allows every registered method


def default_runs_dir() -> Path:
    """``<system temp dir>/unlearning-lab/runs``: cleared by the OS, never inside the repository."""
    return Path(tempfile.gettempdir()) / "unlearning-lab" / "runs"


# --- value checks: each takes (raw YAML value, dotted key) and returns the typed value -------------


def _positive_int(value: object, key: str) -> int:
    # bool is a subclass of int in Python: `true` must not pass as 1.
    if type(value) is not int or value <= 0:
        raise InputError(f"'{key}' must be a positive integer, got {_shown(value)}.")
    return value


def _flag(value: object, key: str) -> bool:
    if type(value) is not bool:
        raise InputError(f"'{key}' must be true or false, got {_shown(value)}.")
    return value


def _names(value: object, key: str) -> tuple[str, ...]:
    """A non-empty list of distinct, non-empty strings (a single string is taken as a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InputError(f"'{key}' must be a non-empty list of names, got {_shown(value)}.")
    names = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise InputError(f"'{key}[{index}]' must be a non-empty string, got {_shown(item)}.")
        if item.strip() in names:
            raise InputError(f"'{key}' lists '{item.strip()}' twice; remove one.")
        names.append(item.strip())
    return tuple(names)


def _method_names(value: object, key: str) -> tuple[str, ...] | None:
    """``all`` -> None (every registered method); else a list of names."""
    if isinstance(value, str) and value.strip().lower() == ALL_METHODS:
        return None
    if value == []:
        raise InputError(f"'{key}' is an empty list, which would allow no method; write '{ALL_METHODS}' or list names.")
    return _names(value, key)


def _seconds_per_method(value: object, key: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise InputError(f"'{key}' must be a mapping of method name to seconds per iteration, got {_shown(value)}.")
    durations = {}
    for name, seconds in value.items():
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"'{key}' has a key {_shown(name)}; keys must be method names.")
        number_ok = type(seconds) in (int, float) and math.isfinite(seconds) and seconds > 0
        if not number_ok:
            raise InputError(f"'{key}.{name}' must be a positive number of seconds, got {_shown(seconds)}.")
        durations[name.strip()] = float(seconds)
    return durations


def _positive_seconds(value: object, key: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise InputError(f"'{key}' must be a positive number of seconds, got {_shown(value)}.")
    return float(value)


def _at_least_one(value: object, key: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 1:
        raise InputError(f"'{key}' must be a number >= 1 (a safety factor), got {_shown(value)}.")
    return float(value)


def _method_name(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"'{key}' must be a method name, got {_shown(value)}.")
    return value.strip()


def _directory(value: object, key: str) -> Path:
    """A path; ``~`` is expanded, and a relative path is made relative to the file by the loader."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"'{key}' must be a directory path, got {_shown(value)}.")
    return Path(value.strip()).expanduser()


def _shown(value: object) -> str:
    if value is None:
        return "nothing (an empty value)"
    numeric_text = isinstance(value, str) and _looks_numeric(value)
    hint = " (a quoted or 1e7-style number is text in YAML: write digits, e.g. 10000000)" if numeric_text else ""
    return f"{type(value).__name__} {value!r}{hint}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check(parse: Callable[[object, str], object]) -> dict:
    return {"parse": parse}


def _positive(default: int) -> int:
    """A field holding a positive integer (a limit, a size, a count)."""
    return field(default=default, metadata=_check(_positive_int))


# --- the profile --------------------------------------------------------------------------------
# Each field's default is the *local* value (no file); `metadata["parse"]` checks the YAML value.


@dataclass(frozen=True)
class Limits:
    """Largest request one user may make. Every value is a positive integer."""

    max_iterations: int = _positive(5000)  # training steps per run
    max_inference_steps: int = _positive(200)  # sampling steps per image
    max_samples: int = _positive(256)  # images generated per comparison
    max_concepts: int = _positive(16)  # concepts erased / kept per run
    max_image_pixels: int = _positive(1024 * 1024)  # width * height of an image
    max_upload_bytes: int = _positive(10 * 1024 * 1024)  # one uploaded file (10 MiB)


@dataclass(frozen=True)
class Queue:
    """Gradio's queue: ``demo.queue(max_size=..., default_concurrency_limit=...)``."""

    max_size: int = _positive(32)  # requests waiting at most
    concurrency: int = _positive(1)  # requests running at once


@dataclass(frozen=True)
class Runs:
    """Where run folders go and how many are kept (oldest deleted first)."""

    dir: Path = field(default_factory=default_runs_dir, metadata=_check(_directory))  # relative: to the file
    keep: int = _positive(50)  # run folders kept at most
    max_bytes: int = _positive(2 * 1024**3)  # total size of the run folders (and their zips) kept, 2 GiB


@dataclass(frozen=True)
class ZeroGPU:
    """How long to ask ZeroGPU for (``spaces.GPU(duration=...)``); see ``unlearning.hosting.zerogpu``.

    duration = min(max_duration, margin * (overhead_s + iterations * seconds per iteration of the method
    (``gpu_duration``, else default_step_s) + pairs * 2 models * sampling steps * sample_step_s)).
    """

    max_duration: float = field(default=120.0, metadata=_check(_positive_seconds))  # the most one request may ask for
    margin: float = field(default=1.5, metadata=_check(_at_least_one))  # safety factor on the estimate
    overhead_s: float = field(default=10.0, metadata=_check(_positive_seconds))  # model to GPU, folder writing
    sample_step_s: float = field(default=0.05, metadata=_check(_positive_seconds))  # one UNet call, one image
    default_step_s: float = field(default=0.5, metadata=_check(_positive_seconds))  # per iteration, unlisted methods


@dataclass(frozen=True)
class HostProfile:
    """What this instance allows; see the module docstring for the YAML form."""

    # model ids in the picker; empty (the local default): every embedded twin, and any hub id or folder may be typed
    models: tuple[str, ...] = field(default=(), metadata=_check(_names))
    # None means every registered method (YAML: `methods: all`); else only these names.
    methods: tuple[str, ...] | None = field(default=None, metadata=_check(_method_names))
    # the method selected when the app opens; None: the app's own default (ESD on the digits twin)
    default_method: str | None = field(default=None, metadata=_check(_method_name))
    limits: Limits = field(default_factory=Limits)
    queue: Queue = field(default_factory=Queue)
    runs: Runs = field(default_factory=Runs)
    # method name -> estimated seconds per iteration, for ZeroGPU's `duration=`; missing: the caller's default.
    # A plain dict so `dataclasses.asdict` works; treat it as read-only.
    gpu_duration: dict[str, float] = field(default_factory=dict, metadata=_check(_seconds_per_method))
    zerogpu: ZeroGPU = field(default_factory=ZeroGPU)
    hub_export: bool = field(default=False, metadata=_check(_flag))  # may exports be pushed to the hub
    # may a model be a folder on this machine's disk; local: yes. A profile file that does not say is false
    # (``parse_profile``): a visitor of a hosted app must not be able to probe the server's file system.
    allow_local_models: bool = field(default=True, metadata=_check(_flag))
    # The file this profile was read from, or None for the local profile. Not a YAML key.
    source: Path | None = field(default=None, compare=False, metadata={"yaml": False})

    @property
    def hosted(self) -> bool:
        """True when a profile file is in force (a Space, or a file named at launch)."""
        return self.source is not None

    def describe(self) -> str:
        """One Markdown line for the app's header and the CLI: which profile is in force and its limits."""
        lim = self.limits
        sizes = (f"at most {lim.max_iterations:,} iterations, {lim.max_inference_steps} sampling steps, "
                 f"{lim.max_samples} samples, {lim.max_concepts} concepts per run")
        if not self.hosted:
            return (f"Profile: **local** (your machine): every embedded model, hub id or local folder, every method; {sizes}. "
                    f"A hosted profile applies only on a Space or with `--profile FILE`.")
        models = ", ".join(self.models) if self.models else "every embedded model and hub id"
        folders = "; local folders allowed" if self.allow_local_models else ""
        methods = ", ".join(self.methods) if self.methods else "every method"
        return f"Profile: **hosted** (`{self.source.name}`): models {models}{folders}; methods {methods}; {sizes}."


def _section_class(f: dataclasses.Field) -> type | None:
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def _yaml_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]


def _build(cls: type, data: object, prefix: str) -> object:
    """One dataclass from one YAML mapping, recursing into sections; unknown keys are errors."""
    where = f"'{prefix}'" if prefix else "the file"
    if data is None:  # a section whose keys are all commented out
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping of keys to values, got {_shown(data)}.")
    fields = {f.name: f for f in _yaml_fields(cls)}
    for key in data:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), fields, n=1)
            guess = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"unknown key '{dotted}' (valid: {', '.join(fields)}){guess}")
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        section = _section_class(f)
        values[name] = _build(section, data[name], dotted) if section else f.metadata["parse"](data[name], dotted)
    return cls(**values)


def parse_profile(data: object, base_dir: Path | None = None, source: Path | None = None) -> HostProfile:
    """Check a YAML document (already parsed) and build the profile.

    Args:
        data: the parsed document; None (an empty file) gives the defaults.
        base_dir: folder that a relative ``runs.dir`` is relative to; default: the working directory.
        source: recorded as ``profile.source``.
    """
    profile = _build(HostProfile, data, "")
    if not (isinstance(data, dict) and "allow_local_models" in data):  # a profile file's default, unlike the local one
        profile = dataclasses.replace(profile, allow_local_models=False)
    runs_dir = profile.runs.dir
    if not runs_dir.is_absolute():
        runs_dir = ((base_dir or Path.cwd()) / runs_dir).resolve()
    runs = dataclasses.replace(profile.runs, dir=runs_dir)
    if profile.methods and profile.default_method and profile.default_method not in profile.methods:
        raise InputError(f"'default_method' is '{profile.default_method}', which 'methods' does not allow "
                         f"({', '.join(profile.methods)}); add it there or pick one of them.")
    return dataclasses.replace(profile, runs=runs, source=source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # a list or mapping as a key: the profile's checks reject it later
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _display_name(path: Path) -> str:
    return path.name if path.resolve() == DEFAULT_CONFIG_PATH else str(path)


def profile_path() -> tuple[Path | None, str]:
    """(the profile file in force or None for local, a few words saying why), from the environment:
    ``$UNLEARNING_CONFIG`` (a path, or ``none``), else ``$SPACE_ID`` (the Space's ``spaces_config.yaml``), else local."""
    named = os.environ.get(ENV_VAR)
    if named is not None:
        if named.strip().lower() in ("", NO_FILE):
            return None, f"${ENV_VAR}={named.strip() or '(empty)'}"
        return Path(named.strip()).expanduser(), f"${ENV_VAR}"
    if os.environ.get(SPACE_ENV_VAR):
        return DEFAULT_CONFIG_PATH, f"on a Hugging Face Space (${SPACE_ENV_VAR})"
    return None, "no profile named"


def use_profile(path: str | Path | None) -> None:
    """Put a profile in force for this process (app.py's and the CLI's ``--profile``): the named file, or
    ``"none"`` for the local profile. None leaves the environment's choice alone."""
    if path is None:
        return
    os.environ[ENV_VAR] = str(path)
    get_profile.cache_clear()


def load_profile(path: str | Path | None = None) -> HostProfile:
    """Read and check the profile in force.

    Args:
        path: a YAML file, or ``"none"`` for the local profile. None: as :func:`profile_path` says.

    The file in force must exist (the Space's ``spaces_config.yaml`` included): a hosted instance must
    not silently fall back to the unrestricted local profile.

    Raises:
        InputError: the file is missing, unreadable, not YAML, or fails a check.
    """
    why = "named"
    if path is None:
        path, why = profile_path()
        if path is None:
            logger.info("profile: local (%s)", why)
            return HostProfile()
    elif str(path).strip().lower() in ("", NO_FILE):
        return HostProfile()
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(
            f"profile '{path}' ({why}) does not exist; name an existing YAML file (--profile or ${ENV_VAR}), "
            f"or set {ENV_VAR}={NO_FILE} for the local profile."
        )
    name = _display_name(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(f"{name}: cannot be read as YAML: {error}") from error
    try:
        profile = parse_profile(data, base_dir=path.resolve().parent, source=path.resolve())
    except InputError as error:
        raise InputError(f"{name}: {error}") from error
    logger.info("profile: hosted, %s (%s)", path, why)
    return profile


def check_model_allowed(text: str, embedded: Sequence[str], is_hub_id: Callable[[str], bool],
                        profile: HostProfile | None = None) -> None:
    """Refuse a model source the profile does not offer, from its text alone: nothing here (nor in the error)
    depends on whether a path exists, so a visitor of a hosted app learns nothing about the server's disk.

    ``embedded``: the embedded model ids; ``is_hub_id``: whether a text has the form of a hub id (owner/name).
    """
    profile = profile or get_profile()
    offered = list(profile.models) or list(embedded)
    choose = f"choose one of: {', '.join(offered)}" + ("" if profile.models else " or a hub id (owner/name)")
    if text in embedded or (is_hub_id(text) and not text.startswith((".", "/", "~"))):
        if profile.models and text not in profile.models:
            raise InputError(f"model '{text}' is not offered here; {choose}.")
        return
    if not profile.allow_local_models:
        raise InputError(f"model '{text}' is not offered here (this hosted instance does not load folders from its disk); "
                         f"{choose}.")


SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact(text: str) -> str:
    """``text`` with the value of every secret in the environment (the Hugging Face token) replaced by ``***``."""
    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name, "").strip()
        if len(secret) >= 8:
            text = text.replace(secret, "***")
    return text


class RedactSecrets(logging.Filter):
    """A logging filter that redacts secrets from every record it sees (see :func:`install_log_redaction`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Redact secrets from everything the root logger's handlers write (call after configuring logging)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


@functools.lru_cache(maxsize=1)
def get_profile() -> HostProfile:
    """The profile of this process, loaded on first use; ``get_profile.cache_clear()`` reloads it."""
    return load_profile()
