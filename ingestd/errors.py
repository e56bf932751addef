"""One error root, one branch per layer.

Errors that can reach a device carry the answer they become on each
protocol: an HTTP status, a CoAP response code and an MQTT 5 reason code.
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error ingestd raises on purpose."""

    http_status = 500
    coap_code = "5.00"
    mqtt_reason = 0x80  # unspecified error


class ConfigError(IngestError):
    """The configuration file names an unknown key or a bad value."""


class DecodeError(IngestError, ValueError):
    """A payload, or one reading in it, cannot be used.

    ``path`` says where: a JSON path such as ``$[2].values.temp`` or a byte
    offset. The message ends with it, so a device owner can find the spot.
    """

    http_status = 400
    coap_code = "4.00"
    mqtt_reason = 0x99  # payload format invalid

    def __init__(self, reason: str, path: str = "$") -> None:
        super().__init__(f"{reason} - at `{path}`")
        self.reason = reason
        self.path = path


class PayloadTooLarge(DecodeError):
    http_status = 413
    coap_code = "4.13"
    mqtt_reason = 0x83  # implementation specific: PUBACK has no "too large"


class UnsupportedFormat(DecodeError):
    http_status = 415
    coap_code = "4.15"
    mqtt_reason = 0x99


class NoRoute(DecodeError):
    """Nothing in the configuration accepts this topic or path."""

    http_status = 404
    coap_code = "4.04"
    mqtt_reason = 0x90  # topic name invalid


class Forbidden(IngestError):
    """The sender's certificate does not allow this write: another device's
    path, or a payload naming a device other than the certificate's."""

    http_status = 403
    coap_code = "4.03"
    mqtt_reason = 0x87  # not authorized

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PkiError(IngestError):
    """An ``ingestd certs`` request that cannot be done as asked: no CA yet,
    a CA that would be overwritten, an unknown device, a bad id. The CLI
    prints it on one line and exits 2."""
