"""Initialization of a circuit: random (seeded) or circuit multiplication of dense factor
HMMs, trained first as ordinary runs and cached."""
