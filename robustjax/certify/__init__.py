"""Certified robustness: bound propagation (IBP, CROWN, ...), smoothing, CLEVER."""
