"""Compatibility shims for the two safety suites, applied at run time without touching site-packages.

1. safety-gymnasium 1.0.0 declares dataclass fields such as ``color: np.array = COLOR['hazard']`` under
``safety_gymnasium/assets/``. Since Python 3.11, ``dataclasses`` rejects unhashable defaults, so
``import safety_gymnasium`` fails with ``ValueError: mutable default <class 'numpy.ndarray'> for field
color``. Rather than editing site-packages, :func:`install` puts a meta-path finder in front of the
normal one for ``safety_gymnasium.assets.*``; its loader compiles the module from a rewritten AST where
each such default becomes ``dataclasses.field(default_factory=lambda: COLOR[...].copy())``.

The loader overrides ``get_code`` (not ``get_data``): a cached ``.pyc`` would otherwise bypass the
rewrite. It never writes bytecode, so the installed package stays untouched. The shim is only
installed for interpreter/package versions known to need it, and installing it twice is a no-op.

2. bullet-safety-gym 1.4.0 silences pybullet with a ``RedirectStream`` that looks up the C symbol named
after ``sys.stdout.name``/``sys.stderr.name``; where these are replaced (pytest capture, Jupyter) it raises
``ValueError: python: undefined symbol: ...``. :func:`original_std_streams` points them at the
interpreter's own streams while Bullet modules are imported and envs are built.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from types import CodeType, ModuleType

__all__ = ["AFFECTED_VERSIONS", "install", "is_installed", "needs_shim", "original_std_streams", "uninstall"]

#: safety-gymnasium releases whose ``assets`` modules have ndarray dataclass defaults.
AFFECTED_VERSIONS: frozenset[str] = frozenset({"1.0.0"})
_PREFIX = "safety_gymnasium.assets."
_MUTABLE_DEFAULT_TABLES = frozenset({"COLOR"})  # module-level dicts of np.ndarray


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("safety-gymnasium")
    except importlib.metadata.PackageNotFoundError:
        return None


def needs_shim() -> bool:
    """True when this Python and the installed safety-gymnasium are a combination that fails to import."""
    return sys.version_info >= (3, 11) and _installed_version() in AFFECTED_VERSIONS


class _DefaultRewriter(ast.NodeTransformer):
    """Turns ``x: T = COLOR[k]`` inside ``@dataclass`` classes into a ``default_factory`` field."""

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        if any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            for stmt in node.body:
                value = stmt.value if isinstance(stmt, ast.AnnAssign) else None
                if (
                    isinstance(value, ast.Subscript)
                    and isinstance(value.value, ast.Name)
                    and value.value.id in _MUTABLE_DEFAULT_TABLES
                ):
                    stmt.value = self._factory(value)
        return node

    @staticmethod
    def _factory(value: ast.expr) -> ast.expr:
        """``__import__('dataclasses').field(default_factory=lambda: <value>.copy())``."""
        src = f"__import__('dataclasses').field(default_factory=lambda: ({ast.unparse(value)}).copy())"
        new = ast.parse(src, mode="eval").body
        return ast.copy_location(ast.fix_missing_locations(new), value)


class _PatchedLoader(importlib.machinery.SourceFileLoader):
    """Compiles the rewritten source; never reads or writes ``__pycache__``."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        source = importlib.util.decode_source(self.get_data(path))
        tree = ast.fix_missing_locations(_DefaultRewriter().visit(ast.parse(source, filename=path)))
        return compile(tree, path, "exec", dont_inherit=True)


class _AssetsFinder:
    """Meta-path finder that hands ``safety_gymnasium.assets.*`` source modules to the patched loader."""

    _safecrowd_compat = True  # marker used for idempotence across reloads of this module

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PREFIX):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _PatchedLoader(fullname, spec.origin)
        return spec


def is_installed() -> bool:
    """True when the finder is on ``sys.meta_path``."""
    return any(getattr(f, "_safecrowd_compat", False) for f in sys.meta_path)


def install() -> bool:
    """Install the shim if needed (idempotent). Returns True if the shim is active afterwards.

    Must run before ``safety_gymnasium`` is first imported; it is a no-op for unaffected versions.
    """
    if not needs_shim():
        return False
    if not is_installed():
        sys.meta_path.insert(0, _AssetsFinder())
    return True


def uninstall() -> None:
    """Remove the finder (for tests); already-imported modules stay as they are."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_safecrowd_compat", False)]


@contextlib.contextmanager
def original_std_streams() -> Iterator[None]:
    """Temporarily restore ``sys.stdout``/``sys.stderr`` to ``sys.__stdout__``/``sys.__stderr__`` (see 2.)."""
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.__stdout__ or sys.stdout
    sys.stderr = sys.__stderr__ or sys.stderr
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
