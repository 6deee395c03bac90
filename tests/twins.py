"""Parametrizing a test over both implementations of a speedup (ids ``c`` and ``py``)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def implementations(twin: ModuleType, compiled: str) -> list[object]:
    """``pytest.param``s for the pure-Python ``twin`` and the compiled module named
    ``compiled``; a compiled module that is not built skips locally and fails under CI."""
    params: list[object] = [pytest.param(twin, id="py")]
    try:
        module = importlib.import_module(compiled)
    except ImportError:
        marks = [] if os.environ.get("CI") == "true" else [pytest.mark.skip(reason="not built")]
        params.append(pytest.param(compiled, id="c", marks=marks))
    else:
        params.append(pytest.param(module, id="c"))
    return params


def selected(request: pytest.FixtureRequest) -> ModuleType:
    """The module of a fixture parametrized by :func:`implementations`."""
    if isinstance(request.param, str):
        pytest.fail(f"{request.param} is not built (CI=true)")
    return request.param  # type: ignore[no-any-return]
