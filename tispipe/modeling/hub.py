"""Is a name a local path or a Hugging Face Hub name? Decided here once, for models and data alike.

An existing path is local. A name that can only be a path (starts with `.`, `/` or `~`, or is not of
the Hub's `owner/name` shape) is local too, so a missing one is an error naming it instead of a
confusing download attempt. `runs/base` is both a valid Hub name and a relative path: an existing
first folder (`runs/`) makes it a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tispipe.errors import TispipeError, special_file

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_local(name: str, local_suffixes: tuple[str, ...] = ()) -> bool:
    """True for names that can only mean a path on this machine; `local_suffixes`: file endings that do too."""
    if name.startswith((".", "/", "~")) or os.path.isabs(name) or "\\" in name or name.endswith(local_suffixes):
        return True
    if not _HUB_NAME.match(name):
        return "/" in name or os.sep in name
    return Path(name.split("/")[0]).is_dir()


def is_hub_name(name: str, local_suffixes: tuple[str, ...] = ()) -> bool:
    """A name that does not exist here and may be loaded from the Hub."""
    return not Path(name).expanduser().exists() and bool(_HUB_NAME.match(name)) and not looks_local(name, local_suffixes)


def same_source(a: str, b: str) -> bool:
    """Two names for one model or folder: the same path however spelled (relative, absolute, via a link),
    or the same hub name."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def local_folder(name: str, what: str, hint: str | None = None) -> Path | None:
    """The local folder `name` refers to, or None for a Hub name; a file or a missing local path is an error."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise TispipeError(f"{what} path {name} is {special_file(path) or 'a file'}, not a model folder")
    if looks_local(name):
        raise TispipeError(f"{what} folder {name} does not exist", hint=hint or "give an existing folder, or a Hugging Face Hub name (owner/name)")
    return None
