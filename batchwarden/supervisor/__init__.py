"""The supervisor: the root nursery of `batchwarden run` (leader election next)."""
