//! Capstan's end-to-end test harness (see README.md in this directory).
