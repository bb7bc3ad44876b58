"""Faust stream processors: the slates x impressions x feedback join into transitions, and
per-user history for ``user-state``. Imports ``contracts`` only. (Lands with issue 3.)"""
