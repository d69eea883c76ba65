"""Seeds: upload and streaming validation of seed data against a template."""
