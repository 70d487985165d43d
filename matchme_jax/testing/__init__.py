"""Helpers shared by the tests: regenerating the seeded weights of the parity fixtures."""
