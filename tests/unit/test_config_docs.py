from pathlib import Path

from wattpool.config import Settings

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [n for n in Settings.model_fields if f"`WATTPOOL_{n.upper()}`" not in text]
    assert not missing, f"add these to docs/configuration.md: {missing}"


def test_environment_overrides_defaults(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WATTPOOL_PORT", "9123")
    monkeypatch.setenv("WATTPOOL_ENGINE", "synthetic")
    settings = Settings()
    assert (settings.port, settings.engine) == (9123, "synthetic")
    assert Settings(port=1).port == 1
