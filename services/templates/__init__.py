"""Templates: CRUD, immutable versions, Jinja2 parsing and the seed fields a template reads."""
