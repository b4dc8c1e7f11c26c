"""The REST API: one handler module per resource; app.py assembles the routes."""
