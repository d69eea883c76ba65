"""Guardrails of a shared service: per-caller rate limits and the operator's content filter.

- `config`: the operator's settings (limits, allow-list, content rules) with defaults.
- `ratelimit`: token buckets per (user or source IP, route class); SQLite and DynamoDB stores.
- `contentfilter`: rule matching over normalised text, one compiled pattern for all rules.

The cap on concurrently RUNNING jobs per user is not here: it is a scheduling decision of the
generator (which job a worker claims next), not a property of a single request.
"""
