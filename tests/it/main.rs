//! Integration tests: real git driving the real filter.
