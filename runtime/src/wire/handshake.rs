//! The build id both sides compare, so a child from another build is refused before it
//! decodes anything.

use std::sync::OnceLock;

use crate::sys;

/// This executable's build id: the linker's GNU build id when there is one, else the identity
/// (device, inode, size, mtime) of the executable file.
pub(crate) fn build_id() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| sys::gnu_build_id().or_else(|| sys::exe_identity().ok()).unwrap_or_default())
}

/// A build id as lowercase hex, for messages.
pub(crate) fn hex(id: &[u8]) -> String {
    if id.is_empty() {
        return "none".into();
    }
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_id_is_stable_and_non_empty() {
        let id = build_id();
        assert!(!id.is_empty());
        assert_eq!(id, build_id());
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
