"""Fakes of external systems that tests and benches talk to over their real protocols."""
