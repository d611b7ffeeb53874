"""The security tests reuse the e2e module-scoped live server (both backends)."""

from tests.e2e.conftest import live

__all__ = ["live"]
