//! The open-file limit, raised at start as QEMU does (since 9.0): every
//! virtio queue holds a kick and a call eventfd, so a few multiport
//! `virtio-serial-pci` functions (31 ports each: 64 queues) pass the usual
//! soft limit of 1024 while the hard limit allows more. virtme-ng gives a
//! guest six of them.

/// Raises the soft RLIMIT_NOFILE to the hard one; returns the soft limit
/// now in force (None: it could not be read).
pub fn raise() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct; raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            log::debug!(
                "keeping the open-file limit {}: setrlimit: {}",
                lim.rlim_cur,
                std::io::Error::last_os_error()
            );
        }
    }
    // rlim_t is u64 on Linux and macOS, i64 on the BSDs.
    #[allow(clippy::useless_conversion)]
    u64::try_from(lim.rlim_cur).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let soft = super::raise().expect("getrlimit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        #[allow(clippy::useless_conversion)]
        let hard = u64::try_from(lim.rlim_max).ok();
        assert_eq!(Some(soft), hard);
    }
}
