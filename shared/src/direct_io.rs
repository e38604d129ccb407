//! Large local files written past the page cache (`O_DIRECT`). A buffered write copies every
//! byte into the page cache, and the sync then writes the copy: on the benchmark machine
//! that copy cost 1.0–1.8 ms of kernel CPU per MiB against 0.12 ms for the same bytes written
//! directly (`dd` of 2 GiB, docs/benchmarks.md, eleventh round), and an archive's gigabytes
//! passing through the page cache push out what PostgreSQL keeps there. A direct write needs
//! its memory, its length and its place in the file aligned to the disk's blocks: buffers
//! come from [`Buffer`] (aligned to [`ALIGN`]), whole blocks go directly and the file's last
//! partial block through the page cache, after which the file's sync covers both.
//!
//! Where the filesystem refuses direct writes (tmpfs, some network filesystems) or a write
//! is not aligned as the disk wants, the file is written through the page cache as before.

use std::fs::File;
use std::io::{self, Write};

use aligned_vec::{AVec, ConstAlign};

/// The alignment direct writes get: 4 KiB covers disks of 512-byte and of 4 KiB blocks.
pub const ALIGN: usize = 4096;

/// Bytes in memory aligned for a direct write.
pub type Buffer = AVec<u8, ConstAlign<ALIGN>>;

/// An empty [`Buffer`] (no memory until bytes come).
pub fn buffer() -> Buffer {
    AVec::new(ALIGN)
}

/// Turns direct writes on for `file`; `false` (and the file unchanged) where its filesystem
/// does not take them.
pub fn enable(file: &File) -> bool {
    set(file, true).is_ok()
}

/// Writes all of `bytes` at the file's position: the whole blocks directly when the file is
/// in direct mode and the buffer is aligned, the rest (and everything, once a direct write
/// was refused) through the page cache. A file left in page-cache mode stays there.
pub fn write_all(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    if is_direct(file) {
        let whole = if bytes.as_ptr().align_offset(ALIGN) == 0 {
            bytes.len() / ALIGN * ALIGN
        } else {
            0
        };
        while written < whole {
            match file.write(&bytes[written..whole]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Alignment the disk does not accept: the page cache takes it from here.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
        }
        if written < bytes.len() {
            set(file, false)?;
        }
    }
    file.write_all(&bytes[written..])
}

#[cfg(target_os = "linux")]
fn flags(file: &File) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

#[cfg(target_os = "linux")]
fn is_direct(file: &File) -> bool {
    flags(file).is_ok_and(|f| f & libc::O_DIRECT != 0)
}

#[cfg(target_os = "linux")]
fn set(file: &File, direct: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = flags(file)?;
    let wanted = if direct {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    if wanted == flags {
        return Ok(());
    }
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, wanted) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn is_direct(_: &File) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn set(_: &File, direct: bool) -> io::Result<()> {
    if direct {
        Err(io::ErrorKind::Unsupported.into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Buffer {
        AVec::from_iter(ALIGN, (0..len).map(|i| (i * 31 % 251) as u8))
    }

    /// Whole blocks, then a partial one, then more: what a large upload writes, byte for byte,
    /// whether the folder's filesystem takes direct writes or not.
    #[test]
    fn a_file_written_directly_holds_every_byte_in_order() {
        let folder = std::env::temp_dir().join(format!("direct-io-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("video");
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let direct = enable(&file);
        let first = bytes(3 * ALIGN);
        let last = bytes(ALIGN + 1234);
        write_all(&mut file, &first).unwrap();
        assert_eq!(is_direct(&file), direct, "whole blocks keep the mode");
        write_all(&mut file, &last).unwrap();
        assert!(!is_direct(&file), "a partial block ends direct writing");
        // Not aligned in memory: written through the page cache, still in order.
        write_all(&mut file, &last[1..]).unwrap();
        file.sync_all().unwrap();
        let mut want = first.to_vec();
        want.extend_from_slice(&last);
        want.extend_from_slice(&last[1..]);
        assert_eq!(std::fs::read(&path).unwrap(), want);
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn buffers_start_on_a_block() {
        let mut buffer = buffer();
        buffer.extend_from_slice(&[1; 10]);
        assert_eq!(buffer.as_ptr().align_offset(ALIGN), 0);
    }
}
