"""Supports every stage leans on: errors, atomic files and checksums, folder locks, crash points for
tests, the torch.distributed world, model loading."""
