"""Every setting and every accounts-file key is documented in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

from worker.accounts import ACCOUNT_KEYS
from worker.settings import Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"SFWORKER_{n.upper()}"
        for n in Settings.model_fields
        if f"`SFWORKER_{n.upper()}`" not in DOC
    ]
    assert not missing


def test_every_accounts_file_key_is_documented() -> None:
    missing = [k for k in ACCOUNT_KEYS if f"`{k}`" not in DOC and not k.endswith(("_env", "_file"))]
    assert not missing
