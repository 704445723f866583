"""Compatibility layers for code written against other messaging APIs (see `hybridcomms.compat.dreamos`)."""
