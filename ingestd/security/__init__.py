"""Device PKI and the identity checks on mTLS listeners."""
