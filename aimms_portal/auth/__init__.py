"""Passwords, secrets and tokens, and the access-control rules."""
