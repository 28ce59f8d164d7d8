//! Integration tests of the `tributary` binary: each test starts real
//! processes on ephemeral ports with its own data directory.

mod bad_input;
mod crash;
mod end_to_end;
mod fleet;
mod peers;
mod support;
