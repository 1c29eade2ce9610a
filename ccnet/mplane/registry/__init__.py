"""The mPlane core registry, shipped as package data (core.json)."""
