//! A small tmpfs for disk-full tests (needs root; callers skip when it cannot be mounted).

use std::path::Path;
use std::process::{Command, Stdio};

/// A mounted tmpfs, unmounted on drop.
pub struct Mount(pub tempfile::TempDir);

impl Mount {
    /// The mount point.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Mounts a tmpfs of `size` (`48m`) on a new temporary directory, or `None` without the right.
pub fn mount_tmpfs(size: &str) -> Option<Mount> {
    let dir = tempfile::tempdir().ok()?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(Mount(dir))
}

/// Takes every free byte of the file system holding `dir` (file `dir/filler`).
pub fn fill(dir: &Path) {
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", dir.join("filler").display()))
        .stderr(Stdio::null())
        .status();
}
