"""Device enrollment: who may log in on which device; its admin API and login page."""
