//! A posix (volume) repository for backup tests: a directory the postgres
//! user owns.

use super::chown_tree;

pub struct PosixRepo {
    pub dir: tempfile::TempDir,
}

impl PosixRepo {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("caprepo")
            .tempdir()
            .unwrap();
        chown_tree(dir.path());
        Self { dir }
    }

    pub fn repository(&self) -> capstan::backup::Repository {
        capstan::backup::Repository::posix(self.dir.path().display().to_string())
    }
}
