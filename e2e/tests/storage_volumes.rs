//! Volumes on a running cluster: grown by `autoGrow` before they fill, and
//! by a larger `storage.size` online, offline (through a rolling restart)
//! or refused by a class that cannot expand. One test binary, so the
//! scenarios run side by side.

#[path = "storage_volumes/autogrow.rs"]
mod autogrow;
#[path = "storage_volumes/resize.rs"]
mod resize;
