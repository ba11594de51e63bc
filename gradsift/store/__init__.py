"""The gradient datastore (datastore) and its compact row formats (compact)."""
