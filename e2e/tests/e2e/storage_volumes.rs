//! Volumes on a running cluster: grown by `autoGrow` before they fill, and
//! by a larger `storage.size` online, offline (through a rolling restart)
//! or refused by a class that cannot expand.

mod autogrow;
mod resize;
