"""Create a new vertical plugin package: ``create_plugin("legal-docs", Path("."))``.

The result, ``./dsvl-adapt-legal-docs/``, is a complete, installable plugin that passes
:func:`dsvl_adapt.testing.check_plugin` as generated: hook implementations, a dataset, a prompt, an
exact-match metric, a hardware target, its Hydra config ``conf/vertical/<name>.yaml``, tests with a
tiny sample data folder (``tests/sample_data/``, see :mod:`dsvl_adapt.scaffold.sample`) and a
README. Two shapes (``data=``):

* ``"generator"`` (default): a deterministic example data generator (coloured shapes), and the
  user's JSONL folder through ``data.source=DIR``. Replace the generator with your domain's data.
* ``"files"``: no generator; the dataset reads the user's labelled folder from ``data.source``
  and refuses to run without one (docs/plugins/file-only.md).

Templates live in ``template/`` beside this module as plain text (``*.tmpl``) filled with
:class:`string.Template` (``${package}``): ``template/common/`` for both shapes, then
``template/<shape>/``. A path part ``__package__`` becomes the package name and ``__name__`` the
vertical name.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from ..errors import DsvlAdaptError

PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME_LENGTH = 40
SUFFIX = ".tmpl"
RENAMES = {"gitignore": ".gitignore"}
DATA_SHAPES = ("generator", "files")
SAMPLE_FOLDER = "tests/sample_data"


class ScaffoldError(DsvlAdaptError, ValueError):
    """The plugin name is invalid or the destination is not free; the message says what to do."""


def validate_name(name: str) -> str:
    """Return ``name`` if it is a lowercase slug (``legal-docs``); raise :class:`ScaffoldError` if not."""
    if not isinstance(name, str) or not PLUGIN_NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        suggestion = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
        suggestion = re.sub(r"^[0-9-]+", "", suggestion)[:MAX_NAME_LENGTH].strip("-")
        hint = f"; try {suggestion!r}" if suggestion and PLUGIN_NAME.match(suggestion) else ""
        raise ScaffoldError(
            f"{name!r} is not a valid plugin name: use lowercase letters and digits in words joined by single "
            f"hyphens, starting with a letter, at most {MAX_NAME_LENGTH} characters (e.g. 'legal-docs'){hint}"
        )
    return name


def names_for(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` uses: distribution, package, dataset, prompt, metric, target."""
    from .. import __version__

    validate_name(name)
    return {
        "name": name,
        "dist": f"dsvl-adapt-{name}",
        "package": "dsvl_adapt_" + name.replace("-", "_"),
        "title": " ".join(word.capitalize() for word in name.split("-")),
        "dataset": f"{name}-examples",
        "prompt": f"{name}-qa",
        "metric": f"{name}-accuracy",
        "target": f"{name}-cpu",
        "core_version": __version__,
    }


def _templates() -> Any:
    return resources.files(__name__).joinpath("template")


def _walk(folder: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            found += _walk(entry, prefix + (entry.name,))
        elif entry.name.endswith(SUFFIX):
            found.append((prefix + (entry.name,), entry))
    return found


def _check_shape(data: str) -> str:
    if data not in DATA_SHAPES:
        raise ScaffoldError(f"data={data!r} is not a plugin shape: use 'generator' (example data generated in code, "
                            "and your folder via data.source) or 'files' (your labelled folder only)")
    return data


def render(name: str, data: str = "generator") -> dict[str, str | bytes]:
    """Every file of the plugin ``name`` in shape ``data`` as ``{relative path: text or bytes}``, writing nothing."""
    values = names_for(name)
    _check_shape(data)
    files: dict[str, str | bytes] = {}
    for layer in ("common", data):
        for parts, entry in _walk(_templates().joinpath(layer)):
            *dirs, filename = parts
            filename = filename[: -len(SUFFIX)]
            filename = RENAMES.get(filename, filename).replace("__name__", values["name"])
            dirs = [values["package"] if part == "__package__" else part for part in dirs]
            path = "/".join([*dirs, filename])
            try:
                files[path] = Template(entry.read_text(encoding="utf-8")).substitute(values)
            except (KeyError, ValueError) as exc:  # a broken template is our bug, not the user's
                raise RuntimeError(f"scaffold template {layer}/{'/'.join(parts)} is broken: {exc!r}") from exc
    from .sample import sample_files

    files.update({f"{SAMPLE_FOLDER}/{relative}": content for relative, content in sample_files().items()})
    return files


def create_plugin(name: str, directory: Path | str, *, data: str = "generator") -> Path:
    """Write the plugin ``dsvl-adapt-<name>`` into ``directory``; returns the new plugin's folder.

    ``directory`` is the parent folder (created if missing). ``data`` is the shape: ``"generator"``
    or ``"files"`` (see the module's docstring). An existing, non-empty
    ``<directory>/dsvl-adapt-<name>`` is never overwritten: :class:`ScaffoldError` says so.
    """
    files = render(name, data)  # validates the name and the shape before touching the disk
    target = Path(directory).expanduser() / names_for(name)["dist"]
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(
            f"{target} already exists and is not empty; choose another --dir or name, or move it away "
            "(new-plugin never overwrites files)"
        )
    for relative, content in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="\n")
    return target


__all__ = ["DATA_SHAPES", "SAMPLE_FOLDER", "ScaffoldError", "create_plugin", "names_for", "render",
           "validate_name"]
