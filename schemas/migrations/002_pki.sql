-- The device PKI's inventory: every certificate `ingestd certs` issued, and
-- which of them are revoked. The CA's files hold the keys; this table is
-- what the CRL, `ingestd certs list` and the listeners' revocation checks
-- are built from.
--
-- A revocation sets revoked_at and, in the same transaction,
-- NOTIFY ingestd_revocations, '<serial>' so that running servers close the
-- device's connections at once (they also poll revoked_at as a fallback).
CREATE TABLE ingestd.certificates (
    serial            text PRIMARY KEY,      -- lowercase hex, no colons
    kind              text NOT NULL CHECK (kind IN ('root','intermediate','server','device','client')),
    subject           text NOT NULL,         -- CN
    device_id         text,                  -- for kind 'device': the identity bound in the SAN URI
    fingerprint       text NOT NULL UNIQUE,  -- sha256 of DER, lowercase hex (pki.fingerprint)
    issuer_serial     text,                  -- the signing CA's serial; NULL for a root
    not_before        timestamptz NOT NULL,
    not_after         timestamptz NOT NULL,
    issued_at         timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz,           -- NULL while the certificate is live
    revocation_reason text                   -- RFC 5280 reason name, e.g. superseded
);
CREATE INDEX certificates_device ON ingestd.certificates (device_id);
CREATE INDEX certificates_revoked ON ingestd.certificates (revoked_at) WHERE revoked_at IS NOT NULL;

-- The registry's view of a device's current certificate: cert_fingerprint
-- (from 001) and its expiry, so an operator sees what expires soon.
ALTER TABLE ingestd.devices ADD COLUMN cert_not_after timestamptz;

-- A device issued a certificate before it was ever seen has no registry
-- row yet; when the row appears (first message over any transport), copy
-- the newest live certificate into it. AFTER INSERT fires only for rows
-- really inserted, never for the per-flush ON CONFLICT updates, so the
-- registry's hot path pays nothing for it.
CREATE FUNCTION ingestd.devices_take_certificate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ingestd.devices d
       SET cert_fingerprint = c.fingerprint, cert_not_after = c.not_after
      FROM (SELECT fingerprint, not_after FROM ingestd.certificates
             WHERE device_id = NEW.id AND kind = 'device'
               AND revoked_at IS NULL AND not_after > now()
             ORDER BY not_before DESC, issued_at DESC LIMIT 1) c
     WHERE d.id = NEW.id AND d.cert_fingerprint IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_take_certificate AFTER INSERT ON ingestd.devices
    FOR EACH ROW EXECUTE FUNCTION ingestd.devices_take_certificate();
