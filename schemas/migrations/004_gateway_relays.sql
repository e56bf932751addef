-- A gateway's certificate names the device ids it relays for (SAN URIs
-- urn:ingestd:relays:<pattern>, see ingestd/security/pki.py). The inventory
-- keeps the patterns too, so that `ingestd certs rotate` issues the new
-- certificate with the same scope and `ingestd certs list` shows it.
ALTER TABLE ingestd.certificates ADD COLUMN relays text[];
COMMENT ON COLUMN ingestd.certificates.relays IS
    'gateway certificates: shell-style patterns of the device ids it may write for';
