"""Jobs: job commands, lifecycle and job queries."""
