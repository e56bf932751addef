"""``python -m bench {demo,load,replay}``: the benchmark and demo commands.

- ``demo``: a local stack and a simulated fleet for about a minute, with
  order updates, then a summary and queries to try (``make demo``).
- ``load``: a fixed rate of readings over MQTT, HTTP, WebSocket or CoAP
  (UDP or TCP); P50 to max latency
  and the sustained rate, written to ``bench/results/<name>.json``.
- ``storm``: thousands of devices opening mTLS connections within seconds;
  success rate and handshake percentiles.
- ``oms``: OMS order transactions alone and while ingestd ingests at its
  peak; their latency and any lock waits (``bench/results/oms_isolation.json``).
- ``replay``: send a folder of payload files to a running server and show
  what it answered for each.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import demo, load, oms_isolation, replay, storm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="ingestd's load generator, fleet demo and payload replay",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module, summary in (
        ("demo", demo, "run a simulated fleet against a local stack (make demo)"),
        ("load", load, "measure latency and throughput at a fixed rate"),
        ("oms", oms_isolation, "OMS transaction latency with and without ingest"),
        ("replay", replay, "send payload files to a running server"),
        ("storm", storm, "many devices opening mTLS connections at once"),
    ):
        sub = commands.add_parser(
            name,
            help=summary,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    args = parser.parse_args(argv)
    # platformdirs, under pgserver, warns at each start where XDG_RUNTIME_DIR
    # is unset (containers, CI); it falls back to /tmp and nothing is wrong
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
