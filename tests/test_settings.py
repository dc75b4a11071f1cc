"""Settings: typed, validated, from SERQ_* variables, and every one documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from serq.settings import Settings, redact_url

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_in_the_readme_table():
    text = README.read_text()
    table = {m.group(1) for m in re.finditer(r"^\|\s*`(SERQ_[A-Z0-9_]+)`", text, flags=re.M)}
    fields = {f"SERQ_{name.upper()}" for name in Settings.model_fields}
    assert fields - table == set(), "settings missing from the README's configuration table"
    assert table - fields == set(), "README documents settings that do not exist"


def test_environment_overrides_and_validation(monkeypatch):
    monkeypatch.setenv("SERQ_PREFIX", "acme")
    monkeypatch.setenv("SERQ_MAX_SECONDS", "12.5")
    settings = Settings()
    assert settings.prefix == "acme" and settings.max_seconds == 12.5
    assert settings.name("classify") == "acme.classify"
    monkeypatch.setenv("SERQ_MAX_SECONDS", "-1")
    with pytest.raises(ValidationError):
        Settings()


def test_bad_prefix_is_refused(monkeypatch):
    monkeypatch.setenv("SERQ_PREFIX", "has space")
    with pytest.raises(ValidationError):
        Settings()


def test_data_roots_are_colon_separated(monkeypatch, tmp_path):
    monkeypatch.setenv("SERQ_DATA_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    assert Settings().data_root_paths == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]


def test_password_is_redacted():
    assert redact_url("amqp://user:s3cret@broker:5672/%2F") == "amqp://user:***@broker:5672/%2F"
    assert "s3cret" not in Settings(amqp_url="amqp://u:s3cret@h/").redacted_amqp_url
