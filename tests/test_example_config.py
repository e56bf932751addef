"""The example configuration in the repository is valid as shipped."""

from pathlib import Path

from ingestd import config


def test_example_config_loads() -> None:
    cfg = config.load(Path(__file__).resolve().parents[1] / "ingestd.example.toml")
    assert [r.codec for r in cfg.mqtt.routes] == ["json", "senml"]


def test_readme_route_examples_are_valid() -> None:
    import re
    import tomllib

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        config.parse(tomllib.loads(block), "README.md")
