"""Serving-side runtime: keyword store, request validation, server launcher, repository assembly."""
