"""The example configuration in the repository is valid as shipped."""

from pathlib import Path

from ingestd import config


def test_example_config_loads() -> None:
    cfg = config.load(Path(__file__).resolve().parents[1] / "ingestd.example.toml")
    assert [r.codec for r in cfg.mqtt.routes] == ["json", "senml"]


def test_readme_route_examples_are_valid(tmp_path: Path) -> None:
    import re
    import tomllib

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        raw = tomllib.loads(block)
        # Certificate paths name an operator's files: give them real ones
        for name in ("certificate", "private_key", "client_ca"):
            if name in raw.get("security", {}):
                (tmp_path / name).write_text("PEM")
                raw["security"][name] = str(tmp_path / name)
        config.parse(raw, "README.md")
