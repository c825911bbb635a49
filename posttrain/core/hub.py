"""The Hugging Face hub, asked only where it can answer, and model references checked before anything loads.

Why: transformers takes any string that is not an existing folder for a hub name and retries the hub
for tens of seconds per file before failing with a many-line message that never names the folder it
looked for. A reward model or judge with a typo in its path then cost minutes per step and trained to
the end with that reward null. `check_model_source` decides in well under a second, in one line.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from posttrain.core.errors import PluginError

HUB_TIMEOUT_S = 5.0
#: How long one reachability probe's answer stands.
PROBE_TTL_S = 30.0
#: (host, port) -> (when probed, why unreachable or None).
_probes: dict[tuple[str, int], tuple[float, str | None]] = {}
#: What a hub repo id can look like: `name` or `namespace/name`; anything else can only be a local path.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?")
#: Files that make a folder a loadable model (a LoRA adapter folder names its base model).
_MODEL_FILES = ("config.json", "adapter_config.json")


def hub_unreachable() -> str | None:
    """Why the hub cannot be asked (offline mode, no connection), or None when it can. One probe per endpoint
    serves the checks of the next `PROBE_TTL_S` seconds (`posttrain validate` asks from two places)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    cached = _probes.get((host, port))
    if cached is not None and time.monotonic() - cached[0] < PROBE_TTL_S:
        return cached[1]
    why = _probe(host, port)
    _probes[(host, port)] = (time.monotonic(), why)
    return why


def _probe(host: str, port: int) -> str | None:
    found: list[str | None] = []

    def probe() -> None:  # in a thread: a name lookup has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
            found.append(None)
        except OSError as exc:
            found.append(f"no connection to {host} ({exc.strerror or exc})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S + 1)
    return found[0] if found else f"no answer from {host} within {HUB_TIMEOUT_S:g} s"


def hub_repo_exists(name: str, kind: str) -> bool | None:
    """True/False when the hub answered; None when it could not say (timeout, server error)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi()
    try:
        (api.dataset_info if kind == "dataset" else api.model_info)(name, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        return False
    except Exception:
        return None
    return True


def looks_local(name_or_path: str) -> bool:
    """A reference that can only be a local path: `/abs`, `./x`, `~/x`, `a/b/c`, anything no hub id looks like."""
    return name_or_path.startswith(("/", ".", "~")) or _REPO_ID.fullmatch(name_or_path) is None


def in_hub_cache(name: str) -> bool:
    """Whether the hub model `name` is in the local Hugging Face cache (its config.json is)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id the cache cannot even look up
        return False


def check_model_source(name_or_path: str, who: str, hint: str = "") -> bool:
    """Fail now, in one line naming the path tried, when `name_or_path` is neither a model folder nor a hub model
    that can be had; True when it must be loaded with `local_files_only` (in the cache, the hub out of reach).

    `who` starts the message (`reward_model`), `hint` ends it (what the path should be). A hub name is looked
    up on the hub only when the hub can be reached (never a long wait offline)."""
    hint = f" ({hint})" if hint else ""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not any((path / f).is_file() for f in _MODEL_FILES):
            raise PluginError(f"{who}: {path.absolute()} is not a saved model folder (no config.json in it){hint}")
        return False
    if looks_local(name_or_path):
        raise PluginError(f"{who}: no model folder at {path.absolute()}{hint}")
    why = hub_unreachable()
    if why is None:
        if hub_repo_exists(name_or_path, "model") is False:
            raise PluginError(f"{who}: {name_or_path!r} is neither a local folder (no {path.absolute()}) nor a "
                              f"model on the hub{hint}")
        return False
    if in_hub_cache(name_or_path):
        return True
    raise PluginError(f"{who}: {name_or_path!r} is not a local folder (no {path.absolute()}), not in the Hugging Face "
                      f"cache, and the hub cannot be asked ({why}){hint}")
