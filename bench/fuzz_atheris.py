"""Coverage-guided fuzzing of the codecs with atheris (libFuzzer), outside CI.

The hypothesis budget in ``tests/test_codec_properties.py`` runs in every
``make test``; this harness is for the longer runs that find what a fixed
budget does not. It drives one codec of the catalog with the same oracle
(``tests/fuzz_oracle.py``): readings that a COPY takes, rejects that name
their place, or a ``DecodeError``; anything else is a crash that libFuzzer
reports with the input that caused it. Its corpus starts from the codec's
fixtures. Codecs with a compiled twin run both and must agree.

    pip install atheris          # or: pip install -e '.[fuzz]'
    python -m bench.fuzz_atheris json --seconds 120
    python -m bench.fuzz_atheris all --seconds 60   # each codec in turn

The first input byte picks the origin (topic and transport identity) from
the codec's list; the rest is the payload. A Sparkplug input is split on
``\\xff\\xfe`` into a session of messages sent to one codec instance.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SESSION_SEPARATOR = b"\xff\xfe"


def _target(name: str) -> None:
    """Run libFuzzer on codec ``name`` in this process, until its time is up."""
    import atheris

    with atheris.instrument_imports():
        from ingestd import clock
        from ingestd.codecs import catalog  # noqa: F401
        from ingestd.model import Origin
        from tests import fuzz_oracle

    target = fuzz_oracle.TARGETS[name]
    twins = fuzz_oracle.TWINS if name in fuzz_oracle.HAS_TWIN else ("",)

    def one_input(data: bytes) -> None:
        if not data:
            return
        origin, payload = data[0], data[1:]
        received = clock.now_us()
        if name != "sparkplug":
            fuzz_oracle.run(name, payload, origin, received, twins)
            return
        device, topic = target.origins[origin % len(target.origins)]
        for codec in fuzz_oracle.codecs(name):
            for raw in payload.split(SESSION_SEPARATOR)[:8]:
                fuzz_oracle.decode_soundly(
                    codec, raw, Origin(device, "fuzz", received, topic)
                )

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


def _corpus(name: str, folder: Path) -> None:
    """Seed the corpus with the codec's fixtures, each behind origin 0."""
    sys.path.insert(0, str(ROOT))
    from tests import fuzz_oracle

    for i, seed in enumerate(fuzz_oracle.seeds(name)):
        (folder / f"fixture-{i}").write_bytes(b"\x00" + seed)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--run"]:  # the child: libFuzzer reads its own flags
        sys.argv = [sys.argv[0], *argv[2:]]
        _target(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("codec", help="a codec of the catalog, or 'all'")
    parser.add_argument("--seconds", type=int, default=60, help="per codec")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--corpus", type=Path, help="kept between runs if given")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests import fuzz_oracle

    names = list(fuzz_oracle.TARGETS) if args.codec == "all" else [args.codec]
    failed = 0
    for name in names:
        corpus = args.corpus / name if args.corpus else None
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
            folder = corpus or Path(scratch)
            folder.mkdir(parents=True, exist_ok=True)
            _corpus(name, folder)
            started = time.monotonic()
            # One process per codec: libFuzzer owns the process it runs in
            code = subprocess.call(
                [sys.executable, "-m", "bench.fuzz_atheris", "--run", name,
                 f"-max_total_time={args.seconds}", f"-max_len={args.max_len}",
                 "-print_final_stats=1", f"-artifact_prefix={folder}/", str(folder)],
                cwd=ROOT,
            )  # fmt: skip
            took = time.monotonic() - started
            print(f"atheris {name}: exit {code} after {took:.0f} s", flush=True)
            failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
