"""The example configuration in the repository is valid as shipped."""

from pathlib import Path

from ingestd import config


def test_example_config_loads() -> None:
    cfg = config.load(Path(__file__).resolve().parents[1] / "ingestd.example.toml")
    assert [r.codec for r in cfg.mqtt.routes] == ["json", "senml"]
