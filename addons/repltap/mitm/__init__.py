"""Thin mitmproxy adapters, one class per concern."""
