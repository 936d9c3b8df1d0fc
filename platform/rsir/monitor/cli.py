"""``rsir monitor``: monitors from YAML, and scoring an archive version by hand.

``apply FILE --endpoint URL``: make the endpoint's monitors match the file's: each entry is
created (the endpoint embeds its query and calibrates it), an entry whose definition
changed is replaced, one that is the same is left; ``--prune`` deletes the endpoint's
monitors the file does not name. The file is checked whole before anything is sent, and
an entry the endpoint refuses is reported with its index, name and field.
``score --store URL --target T --archive ROOT``: score the current version's new rows (the
endpoint does this itself when a version lands; this is for a store without one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml


class EndpointError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", str(body)))
        self.status, self.body = status, body


def _call(endpoint: str, method: str, path: str, api_key: str | None, body: Any = None) -> Any:
    req = urllib.request.Request(endpoint.rstrip("/") + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"x-api-key": api_key} if api_key else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            detail = json.loads(raw)
        except ValueError:
            detail = {"error": raw.decode(errors="replace")[:300]}
        raise EndpointError(err.code, detail) from None
    return json.loads(raw) if raw else None


def load_monitor_file(path: str | Path) -> list[dict[str, Any]]:
    """The ``monitors:`` list of a YAML file; each entry an object with a unique name."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    entries = data.get("monitors") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a top-level 'monitors:' list")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{path}: monitors[{i}]: each monitor is an object with a name")
        if entry["name"] in seen:
            raise ValueError(f"{path}: monitors[{i}]: name {entry['name']!r} appears twice")
        seen.add(entry["name"])
    return entries


def apply(path: str | Path, endpoint: str, api_key: str | None = None, prune: bool = False) -> dict[str, list[str]]:
    entries = load_monitor_file(path)
    existing = {m["name"]: m for m in _call(endpoint, "GET", "/v1/monitors", api_key)["monitors"]}
    done: dict[str, list[str]] = {"created": [], "replaced": [], "unchanged": [], "deleted": []}
    for i, entry in enumerate(entries):
        name = entry["name"]
        old = existing.get(name)
        if old is not None and old["definition"] == _as_stored(entry):
            done["unchanged"].append(name)
            continue
        try:
            if old is not None:
                _call(endpoint, "DELETE", f"/v1/monitors/{name}", api_key)
            _call(endpoint, "POST", "/v1/monitors", api_key, entry)
        except EndpointError as err:
            raise ValueError(f"{path}: monitors[{i}] ({name}): {err} (HTTP {err.status})") from None
        done["replaced" if old is not None else "created"].append(name)
    if prune:
        for name in sorted(set(existing) - {e["name"] for e in entries}):
            _call(endpoint, "DELETE", f"/v1/monitors/{name}", api_key)
            done["deleted"].append(name)
    return done


def _as_stored(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as the endpoint keeps its definition (images are not kept)."""
    out = {k: v for k, v in entry.items() if k != "query"}
    out["query"] = {k: ("<image>" if k in ("image", "image_t2") else v)
                    for k, v in (entry.get("query") or {}).items()}
    return out


def cli_main(args: argparse.Namespace) -> int:
    api_key = os.environ.get(args.api_key_env) if getattr(args, "api_key_env", None) else None
    needed = {"apply": ("file",), "list": (), "score": ("store", "target", "archive")}[args.action]
    missing = [n for n in needed if not getattr(args, n)]
    if missing:
        print(f"rsir monitor {args.action}: needs {', '.join(('--' + n) if n != 'file' else 'FILE' for n in missing)}",
              file=sys.stderr)
        return 2
    try:
        if args.action == "apply":
            done = apply(args.file, args.endpoint, api_key, prune=args.prune)
            for what, names in done.items():
                if names:
                    print(f"{what}: {', '.join(names)}")
        elif args.action == "list":
            for m in _call(args.endpoint, "GET", "/v1/monitors", api_key)["monitors"]:
                print(f"{m['name']}\t{m['target']}\tthreshold {m['threshold']:.4f}"
                      f"{'  (paused)' if m['paused'] else ''}")
        elif args.action == "score":
            from rsir.monitor.job import score_version
            from rsir.monitor.store import MonitorStore
            from rsir.retrieval.archive import current_version

            if not args.local:
                from rsir.cluster import init_ray

                init_ray(args.address)
            store = MonitorStore(args.store)
            version = current_version(args.archive)
            previous = args.previous
            r = score_version(store, args.target, args.archive, version, previous, use_ray=not args.local)
            print(f"{args.target} {r.version}: {r.new_rows} new rows x {r.monitors} monitors -> "
                  f"{r.hits} hits, {r.new_alerts} new alerts in {r.seconds:.1f} s")
    except (ValueError, EndpointError, urllib.error.URLError, FileNotFoundError) as err:
        print(f"rsir monitor {args.action}: {err}", file=sys.stderr)
        return 1
    return 0
