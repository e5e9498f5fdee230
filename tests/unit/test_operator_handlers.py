"""The kopf layer registers what it should, and keeps its bookkeeping under our prefix.

What the handlers do against an API is in ``test_operator_api`` (kmock + looptime).
"""

from __future__ import annotations

import logging

import kopf
import pytest

from hotshard_operator import handlers


def test_handlers_register_create_resume_update_and_a_daemon() -> None:
    registry = kopf.get_default_registry()
    changing = registry._changing.get_all_handlers()
    reasons = sorted(str(h.reason) for h in changing if h.reason is not None)
    assert reasons == ["create", "update"]
    assert {h.fn for h in changing} == {handlers.ensure}
    assert any(h.id == "ensure" and h.reason is None for h in changing)  # resume
    daemons = registry._spawning.get_all_handlers()
    assert [(d.id, d.selector.group, d.selector.any_name) for d in daemons] == [
        ("detect", "hotshard.io", "partitionmaps")
    ]


def test_kopf_bookkeeping_lives_under_our_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "load_client_config", lambda: None)
    settings = kopf.OperatorSettings()
    handlers.configure_settings(settings=settings)
    assert settings.persistence.finalizer == "hotshard.io/finalizer"
    assert settings.persistence.progress_storage.prefix == "hotshard.io"
    assert settings.persistence.diffbase_storage.prefix == "hotshard.io"
    assert settings.posting.level == logging.WARNING
