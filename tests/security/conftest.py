"""Fixtures for the security tests: throwaway CAs made with trustme."""

from __future__ import annotations

import pytest
import trustme


@pytest.fixture
def ca() -> trustme.CA:
    """The CA the servers and clients under test trust."""
    return trustme.CA(organization_name="traceflow test CA")


@pytest.fixture
def other_ca() -> trustme.CA:
    """A CA nobody under test trusts."""
    return trustme.CA(organization_name="someone else's CA")
