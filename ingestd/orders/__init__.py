"""From committed readings to order updates the OMS reads."""
