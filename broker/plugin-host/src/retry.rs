//! Retry policies as plugins.
