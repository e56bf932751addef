"""Which devices a message writes for, and whether a certificate may.

The end-to-end cases (HTTPS, WSS, CoAP over TLS, aliases recorded by a
gateway) are in ``test_mtls.py``; these pin the parts a transport cannot
reach on its own, such as firmware and presence reported for other devices.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.codecs.base import Decoded
from ingestd.model import Reading
from ingestd.pipeline.aliases import Aliases
from ingestd.security.gate import Peer

LATER = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def peer(device: str, *relays: str) -> Peer:
    return Peer(device, "1f", "00" * 32, LATER, relays)


def message(*devices: str) -> Decoded:
    decoded = Decoded()
    for name in devices:
        decoded.readings.append(Reading(name, "t", 1, 1.0))
    return decoded


def test_written_for_names_readings_aliases_firmware_and_presence() -> None:
    aliases = Aliases()
    aliases._table[("lorawan", "70b3d57ed0000a01")] = "tracker-0042"
    decoded = message("field-1")
    decoded.aliases.append(("lorawan", "70b3d57ed0000a01", "field-1"))
    decoded.aliases.append(("lorawan", "aaaaaaaaaaaaaaaa", "field-2"))
    decoded.firmware["yard-3"] = "6.6.6"
    decoded.offline.append("yard-4")
    assert aliases.written_for(decoded) == {
        "field-1", "tracker-0042", "field-2", "yard-3", "yard-4",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("report", "refused"),
    [
        ("firmware", "yard-3"),
        ("offline", "yard-3"),
        ("nothing", None),
    ],
)
def test_a_gateway_reports_no_firmware_or_presence_out_of_scope(
    report: str, refused: str | None
) -> None:
    decoded = message("field-1", "lns-1")
    if report == "firmware":
        decoded.firmware["yard-3"] = "6.6.6-evil"
    elif report == "offline":
        decoded.offline.append("yard-3")
    gateway = peer("lns-1", "field-*")
    assert gateway.stranger(Aliases().written_for(decoded)) == refused


def test_a_device_certificate_writes_only_as_itself() -> None:
    device = peer("truck-8")
    assert device.may_write_as("truck-8")
    assert not device.may_write_as("truck-9")
    assert not device.may_write_as("truck-*")
    assert device.refusal("truck-9") == (
        "certificate of 'truck-8' may not write as 'truck-9'"
    )


@pytest.mark.parametrize(
    ("device", "allowed"),
    [
        ("pump-3", True),
        ("pump-33", False),
        ("pump-٥", False),  # an Arabic-Indic digit is not in [0-9]
        ("field-", True),
        ("field-a/b", True),  # "*" takes any characters, "/" too
        ("Field-1", False),  # case matters
        ("100%", True),
        ("100", False),
    ],
)
def test_relay_patterns_are_shell_style_and_case_sensitive(
    device: str, allowed: bool
) -> None:
    gateway = peer("lns-1", "field-*", "pump-[0-9]", "100%")
    assert gateway.may_write_as(device) is allowed
    assert gateway.may_write_as(device) is allowed  # and again, remembered


def test_a_certificate_claims_no_external_id_for_the_first_time() -> None:
    aliases = Aliases()
    aliases._table[("lorawan", "70b3d57ed0000a01")] = "tracker-0042"
    decoded = message("eui-evil")
    decoded.aliases += [
        ("lorawan", "70b3d57ed0000a01", "eui-evil"),  # known: kept, checked
        ("lorawan", "70b3d57ed0000042", "eui-evil"),  # first sight: dropped
    ]
    gateway = peer("lns-1", "eui-*", "tracker-*")
    assert gateway.stranger_in(decoded, aliases) is None
    assert decoded.aliases == [("lorawan", "70b3d57ed0000a01", "eui-evil")]
    assert aliases.canonical(decoded) == []  # nothing new to record
    assert [r.device for r in decoded.readings] == ["tracker-0042"]


def test_canonical_moves_firmware_and_presence_with_the_readings() -> None:
    aliases = Aliases()
    aliases._table[("zigbee", "0x00158d000bbbbbbb")] = "zb-canonical"
    decoded = message("zb-lamp")
    decoded.aliases.append(("zigbee", "0x00158d000bbbbbbb", "zb-lamp"))
    decoded.firmware["zb-lamp"] = "2.0"
    decoded.offline.append("zb-lamp")
    assert aliases.canonical(decoded) == []
    assert [r.device for r in decoded.readings] == ["zb-canonical"]
    assert (decoded.firmware, decoded.offline) == (
        {"zb-canonical": "2.0"},
        ["zb-canonical"],
    )


# -- the property: what passes the check is written only where it may --------

NAMES = st.sampled_from(
    ["lns-1", "field-1", "field-22", "pump-3", "pump-33", "yard-1", "tracker-9"]
)
EXTERNAL = st.sampled_from(["eui-a", "eui-b", "eui-c", "ieee-d"])
PATTERNS = st.lists(st.sampled_from(["field-*", "pump-[0-9]", "*", "yard-?"]),
                    max_size=2)  # fmt: skip


@given(
    patterns=PATTERNS,
    table=st.dictionaries(EXTERNAL, NAMES, max_size=4),
    readings=st.lists(NAMES, max_size=4),
    claims=st.lists(st.tuples(EXTERNAL, NAMES), max_size=3),
    firmware=st.lists(NAMES, max_size=2),
    offline=st.lists(NAMES, max_size=2),
)
@settings(max_examples=2000, deadline=None)
def test_a_message_that_passes_writes_only_where_the_certificate_may(
    patterns: list[str],
    table: dict[str, str],
    readings: list[str],
    claims: list[tuple[str, str]],
    firmware: list[str],
    offline: list[str],
) -> None:
    aliases = Aliases()
    aliases._table = {("lorawan", ext): device for ext, device in table.items()}
    decoded = message(*readings)
    decoded.aliases = [("lorawan", ext, named) for ext, named in claims]
    decoded.firmware = dict.fromkeys(firmware, "1.0")
    decoded.offline = list(offline)
    sender = peer("lns-1", *patterns)

    refused = sender.stranger_in(decoded, aliases)
    recorded = aliases.canonical(decoded)
    written = [r.device for r in decoded.readings]
    written += [*decoded.firmware, *decoded.offline]
    written += [named for _ns, _ext, named in recorded]
    if refused is None:
        assert all(sender.may_write_as(d) for d in written), written
        assert recorded == []  # a certificate claims no external id first
    else:
        assert not sender.may_write_as(refused)
