"""Generator: workers that run templates against models and write datasets in batches."""
