"""Shared fixtures."""

from __future__ import annotations

from typing import Iterator

import pytest

from _kernel import netns


@pytest.fixture
def ns() -> Iterator[str]:
    """A throwaway network namespace (needs root; see tests/_kernel.py)."""
    with netns() as name:
        yield name
