"""repltap: make WebDAV replication traffic visible, checkable and testable."""

__version__ = "0.1.0"
