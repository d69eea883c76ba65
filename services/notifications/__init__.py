"""The notifications service: users' webhooks, and delivery of job lifecycle facts to them."""
