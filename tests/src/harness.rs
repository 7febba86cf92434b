//! Process harness for end-to-end tests and the sandbox.
