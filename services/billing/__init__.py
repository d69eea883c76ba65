"""Billing: pricing, the cost ledger and hard budgets."""
