"""The tree in ``omniserve.errors``' docstring is the whole truth: every subclass of
``OmniserveError`` anywhere in omniserve is in it, under its real parent, with the module it
lives in where that is not its parent's, and with its status and code where the class sets them.
An error class added without its line in the tree fails here."""

from __future__ import annotations

import gc
import importlib
import pkgutil
import re
from dataclasses import dataclass, field

import omniserve
from omniserve import errors
from omniserve.errors import ApiError, OmniserveError, StartupError

# Never imported: the entry point runs the command; Alembic's env runs migrations.
NOT_IMPORTED = ("omniserve.__main__", "omniserve.accounts.migrations.")
ROOT = re.compile(r" {4}(\w+)\s+(.*)")
BRANCH = re.compile(r" {4}((?:│ {3}| {4})*)(?:├── |└── )(\w+)\s+(.*)")
MODULE = re.compile(r"\(([\w/]+\.py)\)")


@dataclass
class Entry:
    parent: str | None
    text: str
    more: list[str] = field(default_factory=list)  # continuation lines

    @property
    def described(self) -> str:
        return " ".join([self.text, *self.more])


def documented() -> dict[str, Entry]:
    """Each class in the docstring's tree, with its parent there and what its lines say."""
    tree: dict[str, Entry] = {}
    path: list[str] = []  # the names from the root down to the last entry
    for line in (errors.__doc__ or "").splitlines():
        if not path:
            if root := ROOT.fullmatch(line):
                path = [root[1]]
                tree[root[1]] = Entry(None, root[2])
            continue
        if not line.strip():
            break  # the tree ends at its first blank line
        if branch := BRANCH.fullmatch(line):
            depth = len(branch[1]) // 4 + 1
            name = branch[2]
            assert name not in tree, f"{name} is in the tree twice"
            assert depth <= len(path), f"{name} is indented under nothing"
            path = [*path[:depth], name]
            tree[name] = Entry(path[-2], branch[3])
        else:
            tree[path[-1]].more.append(line.strip(" │"))
    return tree


def import_everything() -> None:
    """Every omniserve module, so that every error class is defined; a module that needs an
    extra that is not installed is left out."""
    for info in pkgutil.walk_packages(omniserve.__path__, "omniserve."):
        if info.name.startswith(NOT_IMPORTED):
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if (exc.name or "omniserve").partition(".")[0] == "omniserve":
                raise


def public_parent(cls: type[OmniserveError]) -> type[OmniserveError]:
    """The nearest base that is an omniserve error and not private (``_RetryAfter``)."""
    for base in cls.__mro__[1:]:
        if issubclass(base, OmniserveError) and not base.__name__.startswith("_"):
            return base
    raise AssertionError(f"{cls.__name__} has no public base")


def real() -> dict[str, type[OmniserveError]]:
    """Every public subclass of ``OmniserveError`` that omniserve defines, by name."""
    import_everything()
    found: dict[str, type[OmniserveError]] = {"OmniserveError": OmniserveError}
    todo = [OmniserveError]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("omniserve.") and not sub.__name__.startswith("_"):
                other = found.setdefault(sub.__name__, sub)
                assert other is sub, f"two error classes named {sub.__name__}"
    return found


def sets(cls: type[OmniserveError], name: str) -> bool:
    """Whether the class itself (or a private base below its public parent) sets ``name``."""
    mro = cls.__mro__
    return any(name in vars(c) for c in mro[: mro.index(public_parent(cls))])


def class_level(cls: type[OmniserveError], name: str) -> bool:
    """Whether ``name`` is a class attribute below ``ApiError`` (not set per instance)."""
    return any(name in vars(c) for c in cls.__mro__[: cls.__mro__.index(ApiError)])


def test_every_error_class_is_in_the_tree() -> None:
    tree, classes = documented(), real()
    assert set(tree) == set(classes), (
        f"not in the tree: {sorted(set(classes) - set(tree))}; "
        f"in the tree but not in the code: {sorted(set(tree) - set(classes))}"
    )


def test_each_error_is_under_its_real_parent() -> None:
    tree, classes = documented(), real()
    for name, entry in tree.items():
        cls = classes[name]
        if cls is OmniserveError:
            assert entry.parent is None
        else:
            assert entry.parent == public_parent(cls).__name__, name


def test_the_tree_says_where_each_error_lives_outside_errors_py() -> None:
    """Said once, where a class lives apart from its parent: its subclasses live with it."""
    tree, classes = documented(), real()
    for name, entry in tree.items():
        cls = classes[name]
        said = MODULE.findall(entry.described)
        home = "omniserve.errors" if cls is OmniserveError else public_parent(cls).__module__
        if cls.__module__ == home:
            assert said == [], name
        else:
            path = cls.__module__.removeprefix("omniserve.").replace(".", "/") + ".py"
            assert said == [path], name


def test_each_api_error_line_says_its_status_and_code() -> None:
    tree, classes = documented(), real()
    for name, entry in tree.items():
        cls = classes[name]
        if not issubclass(cls, ApiError) or cls is ApiError:
            continue
        words = entry.described.split()
        if sets(cls, "status"):
            assert words[0] == str(cls.status), name
        if words[0].isdigit() and class_level(cls, "status"):
            assert int(words[0]) == cls.status, name
        if sets(cls, "code"):
            assert words[1].rstrip(":") == cls.code, name


def test_start_up_errors_and_api_errors_are_apart() -> None:
    classes = real()
    startup = {n for n, c in classes.items() if issubclass(c, StartupError)}
    assert startup >= {
        "CheckpointError",
        "DatabaseError",
        "SpeechError",
        "TokenizerUnavailable",
        "UpstreamConfigError",
    }
    assert not any(issubclass(c, ApiError) for c in classes.values() if c.__name__ in startup)


def test_an_undocumented_error_class_is_found() -> None:
    stray = type("StrayError", (ApiError,), {"__module__": "omniserve.stray"})
    try:
        assert real()["StrayError"] is stray
        assert "StrayError" not in documented()
    finally:
        del stray
        gc.collect()  # a class lives in a reference cycle; __subclasses__ forgets it after
    assert "StrayError" not in real()
