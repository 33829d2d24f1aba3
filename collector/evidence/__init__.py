"""Evidence an assessor (or the city hub) can check alone: keys, signatures, the canonical form and the chain
verification. Imports nothing from the rest of the collector, so the hub reuses it as is."""
