"""One exception type for everything a user can get wrong, so the CLI can print it as one line."""

from __future__ import annotations

import importlib.util
import re

# distributions whose import name is not their normalised distribution name
IMPORT_NAMES = {"pyyaml": "yaml", "faiss_cpu": "faiss", "pillow": "PIL"}


class AIMError(ValueError):
    """Bad input or configuration; the message says what is wrong and what to do."""


class MissingDependency(AIMError):
    """A module this package needs is not installed; the message names the extra (or package) that brings it."""

    @classmethod
    def from_import_error(
        cls, err: ModuleNotFoundError, prefer: str | None = None
    ) -> MissingDependency | None:
        """The error for a module missing from aim-icl's own requirements (None for any other module).

        Which extra installs the module is read from the installed package's metadata, so a dependency added to
        pyproject.toml is covered with no table to update; `prefer` picks among extras that share a module."""
        module = (err.name or "").partition(".")[0]
        extras = requirement_extras().get(module)
        return None if extras is None else cls.of(module, prefer if prefer in extras else extras[0])

    @classmethod
    def of(cls, module: str, extra: str) -> MissingDependency:
        if not extra:  # a core requirement: the install itself is broken
            return cls(f"{module} is not installed; it is a dependency of aim-icl: pip install aim-icl")
        return cls(f'needs the [{extra}] extra ({module} is not installed): pip install "aim-icl[{extra}]"')


def check_extra(extra: str) -> None:
    """Raise `MissingDependency` if a module of `extra` is not installed (looked up, not imported: cheap), so a
    command fails before its work rather than at the first import deep inside it."""
    for module, extras in requirement_extras().items():
        if extra in extras and importlib.util.find_spec(module) is None:
            raise MissingDependency.of(module, extra)


def requirement_extras() -> dict[str, list[str]]:
    """Import name -> the extras that require it, in pyproject order ("" for a core requirement)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        lines = requires("aim-icl") or []
    except PackageNotFoundError:  # running from a source tree that was never installed
        return {}
    extras: dict[str, list[str]] = {}
    for line in lines:
        name = re.split(r"[\s;<>=!~\[(]", line, maxsplit=1)[0]
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        module = _import_name(name)
        extras.setdefault(module, []).append(extra.group(1) if extra else "")
    return extras


def _import_name(distribution: str) -> str:
    normalised = re.sub(r"[-_.]+", "_", distribution).lower()
    return IMPORT_NAMES.get(normalised, normalised)
