"""Diagnostics for Muon-type orthogonalisation maps: controlled inputs, metrics, timing."""
