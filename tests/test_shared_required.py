"""Where CI has ../shared (CERTTRAIN_REQUIRE_SHARED=1), a reference check cannot pass by skipping."""

from __future__ import annotations

import pytest

from tests import conftest


def test_missing_shared_files_skip_by_default_and_fail_when_required(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "absent")
    monkeypatch.delenv("CERTTRAIN_REQUIRE_SHARED", raising=False)
    with pytest.raises(pytest.skip.Exception):
        conftest.shared_path("models")
    monkeypatch.setenv("CERTTRAIN_REQUIRE_SHARED", "1")
    with pytest.raises(pytest.fail.Exception, match="CERTTRAIN_REQUIRE_SHARED=1"):
        conftest.shared_path("models")
