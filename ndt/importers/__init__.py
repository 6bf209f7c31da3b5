"""Importers: results written by other code, converted into ndt's run layout."""
