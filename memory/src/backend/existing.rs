//! Mapping memory that already exists (a snapshot's guest RAM): a named
//! shm object or a file, shared (the same memory) or private (a
//! copy-on-write clone that never changes the object). Nothing is created,
//! sized or unlinked here, and dropping such a backend leaves the object
//! as it was.

use std::os::fd::AsFd;
use std::path::Path;

use super::{Backend, Ctx, round_up};
use crate::config::BackendConfig;
use crate::error::Error;
use crate::sys::{self, MapRequest};

/// Where existing memory lives.
#[derive(Debug, Clone, Copy)]
pub enum Existing<'a> {
    /// A named POSIX shm object (`/NAME`).
    Shm(&'a str),
    /// A file, from `offset`.
    File { path: &'a Path, offset: u64 },
}

impl Backend {
    /// Maps `cfg.size()` bytes of `from` (which must hold that many), as
    /// `cfg` describes the backend; `private` maps them copy-on-write.
    pub fn open_existing(
        cfg: &BackendConfig,
        from: Existing<'_>,
        private: bool,
    ) -> Result<Backend, Error> {
        let ctx = Ctx { cfg };
        let flags = if private {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        } | libc::O_CLOEXEC;
        let (fd, offset, what, option) = match from {
            Existing::Shm(name) => (
                sys::shm_open(name, flags, 0)
                    .map_err(|e| ctx.os("name", format!("can't open shm object {name}"), e))?,
                0,
                format!("shm object {name}"),
                "name",
            ),
            Existing::File { path, offset } => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(!private)
                    .open(path)
                    .map_err(|e| {
                        ctx.os("mem-path", format!("can't open '{}'", path.display()), e)
                    })?;
                (
                    f.into(),
                    offset,
                    format!("'{}'", path.display()),
                    "mem-path",
                )
            }
        };
        let page = sys::fd_page_size(fd.as_fd())
            .map_err(|e| ctx.os(option, format!("can't statfs {what}"), e))?;
        let len = round_up(cfg.size(), page)
            .ok_or_else(|| ctx.invalid("size", format!("size={:#x} is too large", cfg.size())))?;
        let have = sys::fstat(fd.as_fd())
            .map_err(|e| ctx.os(option, format!("can't stat {what}"), e))?
            .size;
        if have < offset.saturating_add(len) {
            return Err(ctx.invalid(
                option,
                format!(
                    "{what} holds {have} bytes, not the {} the snapshot needs",
                    offset.saturating_add(len)
                ),
            ));
        }
        let map = sys::map(&MapRequest {
            len: usize::try_from(len)
                .map_err(|_| ctx.invalid("size", format!("size={len} does not fit in memory")))?,
            align: usize::try_from(ctx.default_align(len, page)).unwrap_or(usize::MAX),
            writable: true,
            shared: !private,
            noreserve: true,
            fd: Some((fd.as_fd(), offset)),
        })
        .map_err(|e| ctx.os(option, format!("can't map {len} bytes of {what}"), e))?;
        ctx.advise(&map, page);
        Ok(Backend {
            cfg: cfg.clone(),
            map,
            fd: Some(fd),
            fd_offset: offset,
            shared: !private,
            readonly: false,
            page_size: page,
            shm_name: None,
            populated: None,
            created_file: None,
        })
    }
}
