"""mailgate's tests. A package, so that the helpers are `tests.support` for the tests and the
benches alike (run both from the repository root)."""
